// inline_server.cc: baseline 4 of bench/run, the ceiling of gRPC itself on
// this machine: one process, the gRPC C++ async API (libgrpc++ from Debian),
// one completion queue and one thread per core, every task run inline on the
// gRPC thread that read it. Same contract (crunch.v1.Crunch Run and
// RunStream) and the same handlers as crunchd, byte for byte: the handler
// code below is src/handlers.c's parsing, errors and loops, translated.
//
// Built by bench/run: protoc --cpp_out/--grpc_out (grpc_cpp_plugin), then
//   g++ -O2 inline_server.cc crunch.pb.cc crunch.grpc.pb.cc
//       $(pkg-config --cflags --libs grpc++ protobuf) -lpthread
// Usage: inline_server --port PORT [--threads N]   (N default: online CPUs)

#include <grpcpp/grpcpp.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "crunch/v1/crunch.grpc.pb.h"

using crunch::v1::Crunch;
using crunch::v1::Result;
using crunch::v1::Task;

namespace {

const size_t kMaxPayload = 4u << 20;  // crunchd's default max_payload
const int kPerMethod = 64;            // requests pre-registered per method per CQ
const unsigned kQuoteMax = 32;
const uint64_t kSleepMaxMs = 3600000u;

enum {
    ST_OK = 0,
    ST_INVALID_ARGUMENT = 3,
    ST_NOT_FOUND = 5,
    ST_RESOURCE_EXHAUSTED = 8,
};

uint64_t now_ns()
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// --- the handlers: src/handlers.c, translated ---------------------------------

bool is_space(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool parse_u64(const uint8_t *in, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    size_t i = *pos;
    if (i >= len || in[i] < '0' || in[i] > '9')
        return false;
    for (; i < len && in[i] >= '0' && in[i] <= '9'; i++) {
        unsigned d = in[i] - '0';
        if (v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *pos = i;
    *out = v;
    return true;
}

void skip_space(const uint8_t *in, size_t len, size_t *pos)
{
    while (*pos < len && is_space(in[*pos]))
        (*pos)++;
}

bool parse_one_u64(const uint8_t *in, size_t len, uint64_t *out)
{
    size_t pos = 0;
    skip_space(in, len, &pos);
    if (!parse_u64(in, len, &pos, out))
        return false;
    skip_space(in, len, &pos);
    return pos == len;
}

bool parse_two_u64(const uint8_t *in, size_t len, uint64_t *a, uint64_t *b)
{
    size_t pos = 0, sep;
    skip_space(in, len, &pos);
    if (!parse_u64(in, len, &pos, a))
        return false;
    sep = pos;
    while (pos < len && (in[pos] == ' ' || in[pos] == '\t'))
        pos++;
    if (pos == sep || !parse_u64(in, len, &pos, b))
        return false;
    skip_space(in, len, &pos);
    return pos == len;
}

int handler_error(std::string *out, int code, const uint8_t *in, size_t len, const char *fmt,
                  ...) __attribute__((format(printf, 5, 6)));

int handler_error(std::string *out, int code, const uint8_t *in, size_t len, const char *fmt,
                  ...)
{
    char msg[512];
    size_t n, q = len < kQuoteMax ? len : kQuoteMax;
    va_list ap;
    va_start(ap, fmt);
    int r = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    n = r < 0 ? 0 : ((size_t)r < sizeof(msg) ? (size_t)r : sizeof(msg) - 1);
    n += (size_t)snprintf(msg + n, sizeof(msg) - n, ", got \"");
    for (size_t i = 0; i < q; i++) {
        uint8_t c = in[i];
        if (c == '"' || c == '\\')
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\\%c", c);
        else if (c >= 0x20 && c < 0x7f)
            msg[n++] = (char)c;
        else
            n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\\x%02x", c);
    }
    if (q < len)
        snprintf(msg + n, sizeof(msg) - n, "\" (first %u of %zu bytes)", kQuoteMax, len);
    else
        snprintf(msg + n, sizeof(msg) - n, "\"");
    out->assign(msg);
    return code;
}

// Plain trial division, the very loop of crunchd's is_prime().
bool is_prime(uint64_t n)
{
    if (n < 2)
        return false;
    if (n == 2)
        return true;
    if (n % 2 == 0)
        return false;
    for (uint64_t i = 3; i <= n / i; i += 2) {
        if (n % i == 0)
            return false;
    }
    return true;
}

uint64_t slow_gcd(uint64_t a, uint64_t b)
{
    if (a == 0)
        return b;
    if (b == 0)
        return a;
    for (uint64_t i = a < b ? a : b; i > 1; i--) {
        if (a % i == 0 && b % i == 0)
            return i;
    }
    return 1;
}

// Runs one task: the status code, and *out the output or the error text.
int run_task(const Task &t, std::string *out)
{
    const std::string &h = t.handler();
    const uint8_t *in = (const uint8_t *)t.payload().data();
    size_t len = t.payload().size();

    if (h != "echo" && h != "prime" && h != "gcd" && h != "sleep") {
        std::string shown;
        for (size_t i = 0; i < h.size() && i < 68; i++)
            shown += h[i] >= 0x20 && h[i] < 0x7f ? h[i] : '?';
        if (h.size() > 68)
            shown += "...";
        *out = "unknown handler \"" + shown + "\"; known handlers: echo, prime, gcd, sleep";
        return ST_NOT_FOUND;
    }
    if (len > kMaxPayload) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 "payload is %zu bytes; max_payload is %zu bytes (raise max_payload in "
                 "crunchd.conf or send less)",
                 len, kMaxPayload);
        *out = msg;
        return ST_INVALID_ARGUMENT;
    }
    if (h == "echo") {
        *out = t.payload();
        return ST_OK;
    }
    if (h == "prime") {
        uint64_t n;
        if (!parse_one_u64(in, len, &n))
            return handler_error(out, ST_INVALID_ARGUMENT, in, len,
                                 "prime: payload must be a decimal integer from 0 to %" PRIu64,
                                 UINT64_MAX);
        *out = is_prime(n) ? "true" : "false";
        return ST_OK;
    }
    if (h == "gcd") {
        uint64_t a, b;
        if (!parse_two_u64(in, len, &a, &b))
            return handler_error(out, ST_INVALID_ARGUMENT, in, len,
                                 "gcd: payload must be two decimal integers from 0 to %" PRIu64
                                 " separated by spaces, like \"12 18\"",
                                 UINT64_MAX);
        char text[24];
        snprintf(text, sizeof(text), "%" PRIu64, slow_gcd(a, b));
        *out = text;
        return ST_OK;
    }
    uint64_t ms;
    if (!parse_one_u64(in, len, &ms) || ms > kSleepMaxMs)
        return handler_error(out, ST_INVALID_ARGUMENT, in, len,
                             "sleep: payload must be a number of milliseconds from 0 to %u",
                             (unsigned)kSleepMaxMs);
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L}, rem;
    while (nanosleep(&ts, &rem) == -1 && errno == EINTR)
        ts = rem;
    out->clear();
    return ST_OK;
}

// Fills r with the outcome of t, run on worker (thread) w.
void fill_result(const Task &t, unsigned w, Result *r)
{
    std::string out;
    uint64_t t0 = now_ns();
    int code = run_task(t, &out);
    r->set_id(t.id());
    r->set_code(code);
    if (code == ST_OK)
        r->set_output(std::move(out));
    else
        r->set_error(std::move(out));
    r->set_worker(w);
    r->set_run_us((now_ns() - t0) / 1000);
}

// --- the async server --------------------------------------------------------

// Every completion-queue tag is a Tag: the call it belongs to and what it was.
struct Call;
struct Tag {
    Call *call;
    int what;
};

struct Call {
    virtual ~Call() {}
    virtual void proceed(int what, bool ok) = 0;
};

struct Ctx {
    Crunch::AsyncService *svc;
    grpc::ServerCompletionQueue *cq;
    unsigned index;
};

class RunCall : public Call {
  public:
    explicit RunCall(const Ctx &c) : c_(c), rw_(&ctx_)
    {
        c_.svc->RequestRun(&ctx_, &task_, &rw_, c_.cq, c_.cq, &t_new_);
    }
    void proceed(int what, bool ok) override
    {
        if (what == 0) {  // a new call (or the CQ shutting down)
            if (!ok) {
                delete this;
                return;
            }
            new RunCall(c_);  // keep the number of pre-registered requests
            Result r;
            fill_result(task_, c_.index, &r);
            if (r.code() != ST_OK)
                rw_.FinishWithError(grpc::Status((grpc::StatusCode)r.code(), r.error()),
                                    &t_done_);
            else
                rw_.Finish(r, grpc::Status::OK, &t_done_);
            return;
        }
        delete this;  // finished (ok or not)
    }

  private:
    Ctx c_;
    grpc::ServerContext ctx_;
    Task task_;
    grpc::ServerAsyncResponseWriter<Result> rw_;
    Tag t_new_{this, 0}, t_done_{this, 1};
};

// RunStream: one read and one write outstanding at most, as gRPC requires;
// results queue up while a write is in flight and go out one after another.
class StreamCall : public Call {
  public:
    explicit StreamCall(const Ctx &c) : c_(c), rw_(&ctx_)
    {
        c_.svc->RequestRunStream(&ctx_, &rw_, c_.cq, c_.cq, &t_new_);
    }
    void proceed(int what, bool ok) override
    {
        switch (what) {
        case NEW:
            if (!ok) {
                delete this;
                return;
            }
            new StreamCall(c_);
            read();
            return;
        case READ:
            reading_ = false;
            if (!ok) {  // half-closed (or broken): finish once all is written
                eof_ = true;
            } else {
                out_.emplace_back();
                fill_result(task_, c_.index, &out_.back());
                read();
            }
            pump();
            break;
        case WRITE:
            writing_ = false;
            if (!ok) {  // the client went away
                broken_ = true;
                out_.clear();
            } else {
                out_.pop_front();
            }
            pump();
            break;
        case FINISH:
            finished_ = true;
            break;
        }
        if (finished_ && !reading_ && !writing_)
            delete this;
    }

  private:
    enum { NEW, READ, WRITE, FINISH };
    void read()
    {
        if (broken_)
            return;
        reading_ = true;
        rw_.Read(&task_, &t_read_);
    }
    void pump()
    {
        if (writing_ || finishing_)
            return;
        if (!out_.empty() && !broken_) {
            writing_ = true;
            rw_.Write(out_.front(), &t_write_);
        } else if ((eof_ || broken_) && !reading_) {
            finishing_ = true;
            rw_.Finish(grpc::Status::OK, &t_finish_);
        }
    }
    Ctx c_;
    grpc::ServerContext ctx_;
    Task task_;
    grpc::ServerAsyncReaderWriter<Result, Task> rw_;
    std::deque<Result> out_;
    bool reading_ = false, writing_ = false, eof_ = false;
    bool broken_ = false, finishing_ = false, finished_ = false;
    Tag t_new_{this, NEW}, t_read_{this, READ}, t_write_{this, WRITE}, t_finish_{this, FINISH};
};

void serve_cq(Ctx c)
{
    for (int i = 0; i < kPerMethod; i++) {
        new RunCall(c);
        new StreamCall(c);
    }
    void *tag;
    bool ok;
    while (c.cq->Next(&tag, &ok)) {
        Tag *t = static_cast<Tag *>(tag);
        t->call->proceed(t->what, ok);
    }
}

}  // namespace

int main(int argc, char **argv)
{
    int port = 0;
    unsigned threads = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc)
            port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = (unsigned)atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --port PORT [--threads N]\n", argv[0]);
            return 2;
        }
    }
    if (port <= 0 || port > 65535 || threads < 1) {
        fprintf(stderr, "inline_server: --port 1..65535 is required, --threads at least 1\n");
        return 2;
    }

    // SIGTERM/SIGINT: a thread waits for them and shuts the server down.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);

    Crunch::AsyncService svc;
    grpc::ServerBuilder b;
    std::string addr = "127.0.0.1:" + std::to_string(port);
    int bound = 0;
    b.AddListeningPort(addr, grpc::InsecureServerCredentials(), &bound);
    b.RegisterService(&svc);
    b.SetMaxReceiveMessageSize((int)(kMaxPayload + 4096));
    b.SetMaxSendMessageSize(-1);
    std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
    for (unsigned i = 0; i < threads; i++)
        cqs.emplace_back(b.AddCompletionQueue());
    std::unique_ptr<grpc::Server> server = b.BuildAndStart();
    if (!server || bound == 0) {
        fprintf(stderr, "inline_server: cannot listen on %s\n", addr.c_str());
        return 1;
    }
    std::vector<std::thread> ts;
    for (unsigned i = 0; i < threads; i++)
        ts.emplace_back(serve_cq, Ctx{&svc, cqs[i].get(), i});
    fprintf(stderr, "inline_server[%d]: serving on %s, %u threads\n", (int)getpid(),
            addr.c_str(), threads);

    int sig = 0;
    sigwait(&set, &sig);
    server->Shutdown(std::chrono::system_clock::now());
    for (auto &q : cqs)
        q->Shutdown();
    for (auto &t : ts)
        t.join();
    return 0;
}
