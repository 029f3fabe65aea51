/* nosym.c: test module that does not export crunchd_module. */
int crunchd_module_typo = 1;
