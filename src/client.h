/* client.h: what the client tools, crunchctl and crunch-bench, share: the
 * names of the gRPC status codes and the server address. Global symbols take
 * the prefix cr_client_. */
#ifndef CR_CLIENT_H
#define CR_CLIENT_H

#define CR_CLIENT_DEFAULT_PORT "50051"
#define CR_CLIENT_DEFAULT_ADDR "127.0.0.1:" CR_CLIENT_DEFAULT_PORT

/* "NOT_FOUND" for 5; "CODE_42" for codes outside 0..16 (thread-local
 * storage, valid until the next call on the same thread). */
const char *cr_client_code_name(int code);

/* The address to use when none was given on the command line:
 * $CRUNCH_ADDR if set and not empty, else CR_CLIENT_DEFAULT_ADDR. */
const char *cr_client_default_addr(void);

/* The gRPC target for what the user wrote: a path or unix:PATH is a Unix
 * socket; a host or [v6] without a port gets CR_CLIENT_DEFAULT_PORT; a bare
 * IPv6 address gets brackets; URIs gRPC knows (dns:, ipv4:, ipv6:,
 * unix-abstract:) pass. Returns a malloc'ed string, or NULL if the address
 * is malformed (or out of memory). */
char *cr_client_target(const char *addr);

#endif /* CR_CLIENT_H */
