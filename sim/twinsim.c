/* twinsim: a simulated fleet of ECG monitors that publishes msgpack telemetry, and the load
 * generator of the benchmarks. It owns the fleet model (heart rate, SpO2, temperature, an ECG
 * strip), the schedule and the per-connection publish windows; the MQTT connections are the
 * bridge's, over TLS when the URL is ssl:// (one shared client certificate, or each device its
 * own from a directory). With one connection per device, each device obeys its twin: desired
 * sample_hz / alarm_hr_high / alarm_hr_low, commands ping / set_rate / alert / go_offline (and
 * --flaky), each monitor reports its bed's place on the ward plan, and --nurses adds nurses
 * (resource twins: attend / cancel, the walk and the service are sim/ward.c's model); sharing
 * connections (the load generator) it subscribes to nothing and has no nurses.
 *
 * Threads: main() is the one loop thread; it schedules, packs and publishes (telemetry and
 * command acks). Paho's threads run on_publish_done (takes sim.mu), on_message (copies the
 * message into sim.inbox under sim.mu, nothing else), on_connection and on_log (no lock; they
 * only log, and on_connection counts conn.connects, an atomic).
 * Everything marked "loop thread" below is touched by main() alone; everything marked
 * "under sim.mu" is shared with on_publish_done.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bridge.h"
#include "clock.h"
#include "config.h"
#include "log.h"
#include "ward.h"

#define NS_PER_S 1000000000LL
#define NS_PER_MS 1000000LL
#define RETRY_NS (50 * NS_PER_MS)        /* after a refused publish */
#define MAX_WAIT_NS (100 * NS_PER_MS)    /* the loop looks at the stop flag this often */
#define CONNECT_TIMEOUT_MS 30000u        /* for every connection to come up at start */
#define DRAIN_TIMEOUT_NS (10 * NS_PER_S) /* for outstanding acks at the end */
#define ECG_HZ 250.0                     /* the ECG strip's sample rate */
#define ECG_TABLE 512                    /* points of the one-beat template */
#define ECG_SAMPLES_MAX 4096
#define CMD_SEEN 8    /* command ids remembered per device */
#define CMD_ID_MAX 72 /* bytes of a remembered id (packed); longer ids are not remembered */

/* ---------------------------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------------------------ */

struct opts {
    const char *config_file;
    const char *broker;
    const char *ca, *cert, *key; /* override broker.tls.* */
    const char *cert_dir;        /* device <id>: <cert_dir>/<id>.pem and .key */
    unsigned devices;
    const char *id_prefix;
    double rate; /* per device, Hz; 0 = as fast as possible */
    int qos;
    uint64_t count;       /* per device; 0 = no limit */
    double seconds;       /* 0 = no limit */
    unsigned connections; /* 0 = one per device */
    unsigned ecg_samples; /* per message; 0 = a continuous strip: 250 Hz / rate */
    bool ecg_set;
    const char *ecg_record;    /* --ecg-record FILE (sim/ecg_record.py) */
    unsigned ecg_record_devs;  /* the first N devices replay it (default: all) */
    uint64_t seed;
    bool seed_set;
    unsigned max_inflight;
    bool quiet;
    bool print_last;
    double flaky; /* probability per device per minute of going offline for a while */
    unsigned nurses;     /* --nurses: resource devices nurse-01.. (one connection per device) */
    double nurse_period; /* s between a nurse's telemetry messages */
    double nurse_speed;  /* m/s */
    double service;      /* s at the bedside */
    double episodes_per_hour; /* tachycardia episodes per monitor and hour; 0: 1% per message */
};

static void usage(FILE *f)
{
    fprintf(
        f, "usage: twinsim [options]\n"
           "A simulated fleet of ECG monitors publishing msgpack telemetry on\n"
           "devices/{id}/telemetry; also the load generator of the benchmarks.\n"
           "\n"
           "  -c FILE            read broker.url, broker.tls.*, topics.devices from the hub's\n"
           "                     config file (TWINHUB_* environment variables apply too)\n"
           "  --broker URL       broker address (overrides the config), e.g. tcp://127.0.0.1:1883\n"
           "                     or ssl://localhost:8883 (TLS: the server certificate and host\n"
           "                     name are verified unless broker.tls.verify is false)\n"
           "  --ca FILE          CA certificates (PEM) for the server certificate; the system\n"
           "                     trust store is then not used (overrides broker.tls.ca)\n"
           "  --cert FILE        client certificate (PEM) shared by every connection, with\n"
           "  --key FILE         its private key (override broker.tls.cert / broker.tls.key)\n"
           "  --cert-dir DIR     each device its own identity: device <id> connects with\n"
           "                     DIR/<id>.pem and DIR/<id>.key (certs/make-pki.sh's devices/);\n"
           "                     one connection per device\n"
           "  --devices N        number of devices (default 50)\n"
           "  --id-prefix P      device ids P0001, P0002, ... (default ecg-)\n"
           "  --rate HZ          messages per second per device, fractional allowed;\n"
           "                     0 = as fast as the windows allow (default 1)\n"
           "  --qos 0|1          publish QoS (default 1)\n"
           "  --count N          messages per device, then stop\n"
           "  --seconds S        stop after S seconds\n"
           "  --connections K    spread the devices over K MQTT connections (default: one per\n"
           "                     device, client id twinsim-<id>, retained will \"offline\" and\n"
           "                     birth \"online\" on devices/{id}/status)\n"
           "  --ecg-samples M    ECG samples per message, at 250 Hz (default: a continuous\n"
           "                     strip, 250 / rate samples, the last ending at the message's\n"
           "                     ts; 25 with --rate 0)\n"
           "  --ecg-record FILE  replay a recorded ECG (sim/ecg_record.py makes one from the\n"
           "                     MIT-BIH excerpt in python3-scipy) as the strip, at its real\n"
           "                     rate resampled to 250 Hz; heart_rate (and beats, a count) is\n"
           "                     what an R-peak detector finds in it\n"
           "  --ecg-record-devices N  the first N devices replay it, each from its own place\n"
           "                     (default: all); the others are simulated\n"
           "  --seed S           random seed (default: from the clock)\n"
           "  --max-inflight W   publishes in flight per connection (default 64)\n"
           "  --quiet            no errors or connection changes on stderr\n"
           "  --print-last       after the summary, one line per device: id last_acked_seq\n"
           "  --flaky P          each device goes offline for 2..6 s with probability P per\n"
           "                     minute (one connection per device only; monitors only)\n"
           "  --nurses N         also simulate N nurses (default 0), resource devices nurse-01\n"
           "                     .. nurse-NN (more digits past 99), each with its own connection\n"
           "                     like a monitor's (same broker, TLS, auth, will and birth);\n"
           "                     ignored with shared connections (--connections below --devices)\n"
           "  --nurse-period S   seconds between a nurse's telemetry messages (default 1)\n"
           "  --nurse-speed V    a nurse's walking speed, m/s (default 1.2)\n"
           "  --service S        seconds a nurse spends at the bedside (default 20)\n"
           "  --episodes-per-hour N  tachycardia episodes per monitor and hour, each lasting\n"
           "                     2 to 5 minutes unless a nurse treats it (default: a 1%% chance\n"
           "                     per message of one 20 to 60 messages long)\n"
           "  -h, --help         this text\n");
    /* in three strings: C99 promises 4095 bytes of one */
    fprintf(f,
            "\n"
            "A broker that takes the client id from the certificate (twinhub's mosquitto.conf:\n"
            "use_username_as_clientid) keeps one connection per certificate: with a shared\n"
            "--cert, use --connections 1, or give each device its own with --cert-dir.\n"
            "\n"
            "At the end (count, seconds, SIGINT or SIGTERM) it waits up to 10 s for outstanding\n"
            "acks and prints one line:\n"
            "  twinsim: devices=N sent=N acked=N failed=N seconds=S rate=R msg/s\n"
            "seconds is the sending phase; rate = sent / seconds. Exit status 0, 1 if any\n"
            "publish failed or the run could not start, 2 on a usage error.\n"
            "\n"
            "With one connection per device (no --connections below --devices), each device\n"
            "obeys its twin: it subscribes to devices/{id}/desired and devices/{id}/commands,\n"
            "applies sample_hz (its message rate, 0.1..100 Hz), alarm_hr_high and alarm_hr_low\n"
            "from the delta and reports the applied values in its telemetry (other desired keys\n"
            "are ignored, so they stay in the delta), and acknowledges commands (delivered, then\n"
            "succeeded or failed): ping, set_rate {hz}, alert {level: low|medium|high|critical\n"
            "(default high), reason} (the alarm sounds: logged), go_offline {seconds} (0..3600;\n"
            "the device stops publishing, leaves with its \"offline\" status and comes back\n"
            "\"online\"); any other command fails.\n");
    fputs("\n"
          "The ward (one connection per device): monitor k (0-based) lies in bed k, at\n"
          "x = 2 + 4 * (k / 2), y = 0 (k even) or 8 (k odd) metres, and reports it as\n"
          "pos: {x, y} in its first telemetry message after each (re)connect. Nurse i\n"
          "(0-based) starts at the nurses' station, x = 2 * i, y = 4 (the corridor), and every\n"
          "--nurse-period, and at once when it becomes busy or free, publishes\n"
          "{seq, ts, boot, pos: {x, y}, busy, on_shift: true, skills: [\"ward\"] (odd-numbered\n"
          "nurses: [\"ward\", \"cardiac\"])}. It subscribes to devices/{id}/commands and\n"
          "acknowledges: attend {demand: <twin id>, x, y} (delivered at once; queued, FIFO, up\n"
          "to 16; busy while it has a task; walks there in a straight line at --nurse-speed,\n"
          "serves --service seconds, then succeeded {demand, walked_m, waited_ms (when it\n"
          "waited behind another task)}; a demand that is one of this process's monitors is\n"
          "treated on arrival: its tachycardia ends and none starts while it is served),\n"
          "cancel {demand} (drops its tasks waiting or being walked to, whose attend then fails\n"
          "with error \"cancelled\"; one being served finishes; succeeded {cancelled: bool}),\n"
          "ping, go_offline {seconds} (the model goes on meanwhile); any other command fails.\n"
          "--count applies to monitors only; nurse telemetry is counted in sent and acked, and\n"
          "the summary ends with nurses=N when there are nurses.\n",
          f);
}

static int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    if (*s == '-' || *s == '\0')
        return -EINVAL;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

static int parse_double(const char *s, double min, double max, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < min || v > max)
        return -EINVAL;
    *out = v;
    return 0;
}

enum {
    OPT_BROKER = 256,
    OPT_CA,
    OPT_CERT,
    OPT_KEY,
    OPT_CERT_DIR,
    OPT_DEVICES,
    OPT_ID_PREFIX,
    OPT_RATE,
    OPT_QOS,
    OPT_COUNT,
    OPT_SECONDS,
    OPT_CONNECTIONS,
    OPT_ECG,
    OPT_ECG_RECORD,
    OPT_ECG_RECORD_DEVS,
    OPT_SEED,
    OPT_INFLIGHT,
    OPT_QUIET,
    OPT_PRINT_LAST,
    OPT_FLAKY,
    OPT_NURSES,
    OPT_NURSE_PERIOD,
    OPT_NURSE_SPEED,
    OPT_SERVICE,
    OPT_EPISODES,
};

/* Returns 0, or 2 (usage error, already reported), or 1 after --help (exit 0). */
static int opts_parse(struct opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"broker", required_argument, NULL, OPT_BROKER},
        {"ca", required_argument, NULL, OPT_CA},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"cert-dir", required_argument, NULL, OPT_CERT_DIR},
        {"devices", required_argument, NULL, OPT_DEVICES},
        {"id-prefix", required_argument, NULL, OPT_ID_PREFIX},
        {"rate", required_argument, NULL, OPT_RATE},
        {"qos", required_argument, NULL, OPT_QOS},
        {"count", required_argument, NULL, OPT_COUNT},
        {"seconds", required_argument, NULL, OPT_SECONDS},
        {"connections", required_argument, NULL, OPT_CONNECTIONS},
        {"ecg-samples", required_argument, NULL, OPT_ECG},
        {"ecg-record", required_argument, NULL, OPT_ECG_RECORD},
        {"ecg-record-devices", required_argument, NULL, OPT_ECG_RECORD_DEVS},
        {"seed", required_argument, NULL, OPT_SEED},
        {"max-inflight", required_argument, NULL, OPT_INFLIGHT},
        {"quiet", no_argument, NULL, OPT_QUIET},
        {"print-last", no_argument, NULL, OPT_PRINT_LAST},
        {"flaky", required_argument, NULL, OPT_FLAKY},
        {"nurses", required_argument, NULL, OPT_NURSES},
        {"nurse-period", required_argument, NULL, OPT_NURSE_PERIOD},
        {"nurse-speed", required_argument, NULL, OPT_NURSE_SPEED},
        {"service", required_argument, NULL, OPT_SERVICE},
        {"episodes-per-hour", required_argument, NULL, OPT_EPISODES},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    uint64_t u;
    int ch;

    *o = (struct opts){.devices = 50,
                       .id_prefix = "ecg-",
                       .rate = 1.0,
                       .qos = 1,
                       .ecg_samples = 25,
                       .max_inflight = 64,
                       .nurse_period = 1.0,
                       .nurse_speed = 1.2,
                       .service = 20.0};
    while ((ch = getopt_long(argc, argv, "c:h", longopts, NULL)) != -1) {
        const char *bad = NULL;
        switch (ch) {
        case 'c':
            o->config_file = optarg;
            break;
        case OPT_BROKER:
            o->broker = optarg;
            break;
        case OPT_CA:
            if (!*optarg)
                bad = "--ca: expected a file";
            o->ca = optarg;
            break;
        case OPT_CERT:
            if (!*optarg)
                bad = "--cert: expected a file";
            o->cert = optarg;
            break;
        case OPT_KEY:
            if (!*optarg)
                bad = "--key: expected a file";
            o->key = optarg;
            break;
        case OPT_CERT_DIR:
            if (!*optarg)
                bad = "--cert-dir: expected a directory";
            o->cert_dir = optarg;
            break;
        case OPT_DEVICES:
            if (parse_uint(optarg, 1, 1000000, &u))
                bad = "--devices: expected 1..1000000";
            o->devices = (unsigned)u;
            break;
        case OPT_ID_PREFIX:
            o->id_prefix = optarg;
            break;
        case OPT_RATE:
            if (parse_double(optarg, 0, 1e6, &o->rate))
                bad = "--rate: expected a number of Hz in 0..1000000 (0 = as fast as possible)";
            break;
        case OPT_QOS:
            if (parse_uint(optarg, 0, 1, &u))
                bad = "--qos: expected 0 or 1";
            o->qos = (int)u;
            break;
        case OPT_COUNT:
            if (parse_uint(optarg, 1, UINT64_MAX / 2, &o->count))
                bad = "--count: expected a positive number of messages per device";
            break;
        case OPT_SECONDS:
            if (parse_double(optarg, 0.001, 1e9, &o->seconds))
                bad = "--seconds: expected a positive number";
            break;
        case OPT_CONNECTIONS:
            if (parse_uint(optarg, 1, 1000000, &u))
                bad = "--connections: expected 1..1000000";
            o->connections = (unsigned)u;
            break;
        case OPT_ECG:
            if (parse_uint(optarg, 0, ECG_SAMPLES_MAX, &u))
                bad = "--ecg-samples: expected 0..4096";
            o->ecg_samples = (unsigned)u;
            o->ecg_set = true;
            break;
        case OPT_ECG_RECORD:
            o->ecg_record = optarg;
            break;
        case OPT_ECG_RECORD_DEVS:
            if (parse_uint(optarg, 0, 1000000, &u))
                bad = "--ecg-record-devices: expected 0..1000000";
            o->ecg_record_devs = (unsigned)u;
            break;
        case OPT_SEED:
            if (parse_uint(optarg, 0, UINT64_MAX, &o->seed))
                bad = "--seed: expected an unsigned integer";
            o->seed_set = true;
            break;
        case OPT_INFLIGHT:
            if (parse_uint(optarg, 1, 65535, &u))
                bad = "--max-inflight: expected 1..65535";
            o->max_inflight = (unsigned)u;
            break;
        case OPT_QUIET:
            o->quiet = true;
            break;
        case OPT_PRINT_LAST:
            o->print_last = true;
            break;
        case OPT_FLAKY:
            if (parse_double(optarg, 0, 1, &o->flaky))
                bad = "--flaky: expected a probability in 0..1";
            break;
        case OPT_NURSES:
            if (parse_uint(optarg, 0, 10000, &u))
                bad = "--nurses: expected 0..10000";
            o->nurses = (unsigned)u;
            break;
        case OPT_NURSE_PERIOD:
            if (parse_double(optarg, 0.01, 3600, &o->nurse_period))
                bad = "--nurse-period: expected 0.01..3600 seconds";
            break;
        case OPT_NURSE_SPEED:
            if (parse_double(optarg, 0.01, 1000, &o->nurse_speed))
                bad = "--nurse-speed: expected 0.01..1000 m/s";
            break;
        case OPT_SERVICE:
            if (parse_double(optarg, 0, 86400, &o->service))
                bad = "--service: expected 0..86400 seconds";
            break;
        case OPT_EPISODES:
            if (parse_double(optarg, 0.001, 36000, &o->episodes_per_hour))
                bad = "--episodes-per-hour: expected 0.001..36000";
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            usage(stderr);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "twinsim: %s, got '%s'\n", bad, optarg);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "twinsim: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o->cert != !o->key) {
        fprintf(stderr, "twinsim: --cert and --key go together\n");
        return 2;
    }
    if (o->cert_dir && o->cert) {
        fprintf(stderr, "twinsim: --cert-dir and --cert/--key exclude each other\n");
        return 2;
    }
    if (o->cert_dir && o->connections && o->connections < o->devices) {
        fprintf(stderr, "twinsim: --cert-dir gives each device its own certificate, so its own "
                        "connection: --connections must be omitted or equal --devices\n");
        return 2;
    }
    if (o->connections == 0 || o->connections > o->devices)
        o->connections = o->devices;
    if (o->flaky > 0 && o->connections < o->devices) {
        fprintf(stderr, "twinsim: --flaky needs one connection per device\n");
        return 2;
    }
    if (o->nurses && o->connections < o->devices) {
        /* the load generator's devices obey nothing: no commands, so no nurses */
        fprintf(stderr, "twinsim: --nurses is ignored with shared connections\n");
        o->nurses = 0;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Clocks and randomness
 * ------------------------------------------------------------------------------------------ */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}


static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* xorshift64*: state never 0. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dULL;
}

/* Uniform in [0, 1). */
static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---------------------------------------------------------------------------------------------
 * The fleet
 * ------------------------------------------------------------------------------------------ */

struct conn;
struct nurse;

struct dev {
    char id[BRIDGE_ID_MAX + 1];
    char *topic;                                      /* devices/{id}/telemetry */
    char *status_topic;                               /* devices/{id}/status */
    char *desired_topic, *commands_topic, *ack_topic; /* one connection per device only */
    const char *subs[2];
    unsigned n_subs;
    struct conn *conn;
    struct nurse *nurse; /* NULL: an ECG monitor */

    /* obeying (loop thread): the schedule is base_ns + (k - k0 + slot) * period_ns */
    int64_t period_ns, base_ns;
    uint64_t k0;
    struct setting {
        bool set, is_int;
        double v;
    } sample_hz, hr_high, hr_low;
    /* the last commands handled, so a re-sent one is acknowledged again, not run twice */
    struct seen_cmd {
        unsigned char id[CMD_ID_MAX]; /* the id as packed msgpack */
        size_t len;
        bool ok;
    } seen[CMD_SEEN];
    unsigned seen_next;

    /* loop thread */
    uint64_t k;       /* messages issued; the next seq is k + 1 */
    double slot;      /* its place in the period, 0..1: devices are spread evenly */
    int64_t deadline; /* monotonic ns of message k */
    bool refused;     /* the last attempt at seq k + 1 was refused */
    bool done;
    struct dev *next; /* in its connection's due queue */

    /* the model (loop thread) */
    uint64_t rng;
    double hr, hr_base, spo2, spo2_base, temp, temp_base;
    int episode_left;
    double episode_hr;
    double ecg_phase; /* position in the current beat, 0..1 */
    double ecg_wander;
    struct replay *rp; /* --ecg-record: the strip is the recording, heart_rate its R peaks */
    int64_t calm_until;  /* treated by a nurse: no tachycardia before this (monotonic ns) */
    unsigned pos_sent;   /* the conn's `connects` when pos last went out (per device only) */
    unsigned pos_packed; /* what pos_sent becomes when the message being packed goes out */

    /* under sim.mu */
    uint64_t last_acked;
};

/* One in-flight publish: the window of a connection is its pool of slots. */
struct slot {
    struct conn *conn;
    struct dev *dev; /* NULL: a status message, not counted as telemetry */
    uint64_t seq;
    struct slot *next_free;
};

struct conn {
    struct bridge_client *client;
    char client_id[BRIDGE_ID_MAX + 32];
    unsigned index;
    atomic_bool ever_connected; /* Paho's threads only */
    atomic_bool leaving;        /* go_offline: in-flight publishes cancelled on purpose */
    atomic_uint connects;       /* connects so far (Paho's threads; the loop reads it) */

    /* under sim.mu */
    struct slot *slots;
    struct slot *free;
    unsigned inflight;
    bool want_wake;          /* the loop is waiting for a slot of this connection */
    struct conn *ready_next; /* in sim.ready */

    /* loop thread */
    struct dev *due_head, *due_tail; /* devices whose message is due, FIFO */
    bool in_ring;
    bool parked;      /* window full: off the ring until handed back */
    int64_t retry_at; /* a publish was refused: skip until then */
    bool offline;     /* go_offline: no client until offline_until, then until connected */
    bool reconnecting;
    int64_t offline_until;
};

/* A nurse (loop thread): the ward's model, and when its telemetry goes out. It is a device too
 * (devs[n_mon + index]): its connection, acks and go_offline are the monitors'; it is never in
 * the deadline heap: nurses_step puts it in its connection's due queue. */
struct nurse {
    struct ward_nurse w;
    unsigned index;   /* 0-based: nurse-01 is 0 */
    bool queued;      /* in its connection's due queue */
    bool dirty;       /* busy changed: publish at once */
    int64_t next_pub; /* monotonic ns of its next periodic message */
};

/* A message for a device (desired or commands), copied on Paho's thread, handled by the loop. */
struct inmsg {
    struct dev *dev;
    enum bridge_topic_kind kind;
    size_t len;
    struct inmsg *next;
    char payload[];
};

static struct {
    struct opts o;
    struct config cfg;
    struct bridge_topics topics;
    struct dev *devs; /* the monitors, then the nurses */
    struct conn *conns;
    unsigned n_devs, n_conns;
    unsigned n_mon, n_nurses; /* n_devs = n_mon + n_nurses */
    struct nurse *nurses;
    int64_t nurse_period_ns;
    int64_t nurse_wake; /* loop thread: when nurses_step is next needed */
    bool per_device;    /* one connection per device */
    int64_t period_ns; /* rate > 0 */
    int64_t boot;      /* every device's `boot`: when this run started (ms), new at each start */
    int ecg_table[ECG_TABLE];

    /* loop thread */
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    uint64_t sent;
    uint64_t refused;  /* refused attempts (retried) */
    uint64_t dropped;  /* refused for good, or still owed at the end: counted as failed */
    struct dev **heap; /* devices waiting for their deadline, by deadline */
    unsigned heap_len;
    struct conn **ring; /* connections with due devices, round robin */
    unsigned ring_head, ring_len;
    unsigned n_offline; /* connections with offline set */
    uint64_t flaky_rng;
    msgpack_sbuffer abuf; /* acks */
    msgpack_packer apk;

    /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool waiting;
    bool wake_any;      /* signal the loop on every completion (status messages, drain) */
    struct conn *ready; /* connections handed back after a slot freed */
    uint64_t total_inflight;
    uint64_t acked;
    uint64_t failed;
    uint64_t status_failed;
    int last_fail_status;
    uint64_t cancelled;  /* in flight when a device went offline on purpose: not failures */
    struct inmsg *inbox; /* newest first */
    atomic_bool inbox_pending;
    atomic_bool ready_pending;
} sim;

static volatile sig_atomic_t stop_signals;

static void on_signal(int sig)
{
    (void)sig;
    stop_signals++;
}

/* The beat template: a sum of Gaussians (P, Q, R, S, T) over one beat at 75 bpm, in units of
 * 10 uV, so the R peak is ~110 and every sample packs into one or two bytes. */
static void ecg_table_init(int *table)
{
    static const struct {
        double a, mu, sigma;
    } w[] = {
        {15, 0.20, 0.025},   {-10, 0.355, 0.010}, {110, 0.375, 0.012},
        {-25, 0.395, 0.010}, {30, 0.62, 0.045},
    };
    for (int i = 0; i < ECG_TABLE; i++) {
        double t = (double)i / ECG_TABLE, v = 0;
        for (size_t j = 0; j < sizeof w / sizeof w[0]; j++) {
            double d = (t - w[j].mu) / w[j].sigma;
            v += w[j].a * exp(-0.5 * d * d);
        }
        table[i] = (int)lround(v);
    }
}

static void dev_model_init(struct dev *d, uint64_t seed, unsigned i)
{
    uint64_t x = seed ^ ((uint64_t)i * 0xd1b54a32d192ed03ULL);
    d->rng = splitmix64(&x) | 1;
    d->hr_base = 60 + 25 * rng_unit(&d->rng);
    d->hr = d->hr_base;
    d->spo2_base = 96.5 + 2.5 * rng_unit(&d->rng);
    d->spo2 = d->spo2_base;
    d->temp_base = 36.4 + 0.7 * rng_unit(&d->rng);
    d->temp = d->temp_base;
    d->ecg_phase = rng_unit(&d->rng);
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

/* --ecg-record: a recording (sim/ecg_record.py: "TWSIMECG", le32 rate, le32 count, le16 uV),
 * loaded once and replayed by the first --ecg-record-devices devices, each from its own place
 * in it, resampled to the strip's 250 Hz; their heart_rate is what an R-peak detector finds in
 * the strip they send, as a monitor's would be. */
static struct {
    int16_t *x;
    size_t n;
    double rate;
} rec;

#define DET_WIN 38 /* 150 ms of the strip: the moving integral */

struct replay {
    double pos; /* in recording samples */
    /* the detector, on the strip as sent: slope, squared, integrated over 150 ms; a peak of
     * that above 35% of its recent maximum (halving every 2 s) and 250 ms after the last beat
     * is an R peak; heart_rate is 60 s over the median of the last 8 RR intervals */
    double x1, x2;
    double win[DET_WIN], wsum;
    unsigned wi;
    double peak, i1, i2;
    uint64_t t, last_beat, beats;
    double rr[8];
    unsigned nrr, rri;
    double hr;
};

static int rec_load(const char *path)
{
    FILE *f = fopen(path, "rb");
    unsigned char h[16];
    if (!f) {
        fprintf(stderr, "twinsim: --ecg-record %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint32_t rate = 0, n = 0;
    bool ok = fread(h, 1, 16, f) == 16 && memcmp(h, "TWSIMECG", 8) == 0;
    if (ok) {
        rate = (uint32_t)h[8] | (uint32_t)h[9] << 8 | (uint32_t)h[10] << 16 | (uint32_t)h[11] << 24;
        n = (uint32_t)h[12] | (uint32_t)h[13] << 8 | (uint32_t)h[14] << 16 | (uint32_t)h[15] << 24;
        ok = rate >= 50 && rate <= 10000 && n >= rate * 10 && n <= 100000000;
    }
    rec.x = ok ? malloc((size_t)n * 2) : NULL;
    unsigned char *raw = ok ? malloc((size_t)n * 2) : NULL;
    ok = ok && rec.x && raw && fread(raw, 2, n, f) == n;
    for (uint32_t i = 0; ok && i < n; i++)
        rec.x[i] = (int16_t)(uint16_t)(raw[2 * i] | raw[2 * i + 1] << 8);
    free(raw);
    fclose(f);
    if (!ok) {
        fprintf(stderr, "twinsim: --ecg-record %s: not a recording made by sim/ecg_record.py "
                        "(at least 10 s at 50..10000 Hz)\n",
                path);
        free(rec.x);
        rec.x = NULL;
        return -1;
    }
    rec.n = n;
    rec.rate = rate;
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* One sample of the strip (uV) into the detector. */
static void detect(struct replay *r, double x)
{
    double slope = x - r->x2, e = slope * slope;
    r->x2 = r->x1;
    r->x1 = x;
    r->wsum += e - r->win[r->wi];
    r->win[r->wi] = e;
    r->wi = (r->wi + 1) % DET_WIN;
    double in = r->wsum / DET_WIN;
    r->peak = fmax(in, r->peak * 0.998615); /* 0.5 ^ (1 / 500): halves in 2 s */
    uint64_t at = r->t++; /* the integral's value at `at - 1` is r->i1 */
    if (at >= 500 && r->i1 > r->i2 && r->i1 >= in && r->i1 > 0.35 * r->peak &&
        (!r->last_beat || at - 1 - r->last_beat > 62)) {
        if (r->last_beat) {
            r->rr[r->rri] = (double)(at - 1 - r->last_beat);
            r->rri = (r->rri + 1) % 8;
            if (r->nrr < 8)
                r->nrr++;
            double s[8];
            memcpy(s, r->rr, sizeof(s));
            qsort(s, r->nrr, sizeof(double), cmp_double);
            r->hr = 60.0 * ECG_HZ / s[r->nrr / 2];
        }
        r->last_beat = at - 1;
        r->beats++;
    }
    r->i2 = r->i1;
    r->i1 = in;
}

/* The next strip sample of a replaying device: the recording at its place, linearly
 * interpolated to 250 Hz, from the start again at the end. */
static double replay_next(struct replay *r)
{
    size_t i = (size_t)r->pos;
    double f = r->pos - (double)i;
    double x = rec.x[i % rec.n] * (1 - f) + rec.x[(i + 1) % rec.n] * f;
    r->pos += rec.rate / ECG_HZ;
    if (r->pos >= (double)rec.n)
        r->pos -= (double)rec.n;
    detect(r, x);
    return x;
}

/* One step of the vitals: a mean-reverting random walk, with tachycardia episodes (1% chance
 * per message to start one of 20..60 messages at 121..150 bpm, SpO2 sagging towards 93; none
 * while a nurse treats the patient). */
static void dev_model_step(struct dev *d)
{
    double hr_target = d->hr_base, spo2_target = d->spo2_base, temp_target = d->temp_base;
    if (d->calm_until && mono_ns() >= d->calm_until)
        d->calm_until = 0;
    /* the chance of an episode starting with this message: 1%, or --episodes-per-hour spread
     * over the device's message rate */
    double p = 0.01;
    if (sim.o.episodes_per_hour > 0 && d->period_ns > 0)
        p = sim.o.episodes_per_hour / 3600.0 * ((double)d->period_ns / 1e9);
    if (d->episode_left == 0 && !d->calm_until && rng_unit(&d->rng) < p) {
        d->episode_left = 20 + (int)(rng_next(&d->rng) % 41);
        /* a ward's episodes (--episodes-per-hour) last until treated, or 2 to 5 minutes at the
         * rate the monitor sends at when it starts */
        if (sim.o.episodes_per_hour > 0 && d->period_ns > 0)
            d->episode_left = (int)((120 + 180 * rng_unit(&d->rng)) / ((double)d->period_ns / 1e9));
        d->episode_hr = 125 + 20 * rng_unit(&d->rng);
    }
    if (d->episode_left > 0) {
        d->episode_left--;
        /* paroxysmal: the rate jumps, then wanders above 120 */
        d->hr = clampd(d->episode_hr + 8 * (rng_unit(&d->rng) - 0.5), 121, 150);
        spo2_target = 93.0;
        temp_target = d->temp_base + 0.5;
    } else {
        d->hr += 0.15 * (hr_target - d->hr) + 4 * (rng_unit(&d->rng) - 0.5);
        d->hr = clampd(d->hr, 50, 150);
    }
    d->spo2 += 0.2 * (spo2_target - d->spo2) + 0.6 * (rng_unit(&d->rng) - 0.5);
    d->spo2 = clampd(d->spo2, 92, 100);
    d->temp += 0.05 * (temp_target - d->temp) + 0.04 * (rng_unit(&d->rng) - 0.5);
    d->temp = clampd(d->temp, 36.0, 38.5);
}

static void pack_key(msgpack_packer *pk, const char *key)
{
    msgpack_pack_str_with_body(pk, key, strlen(key));
}

/* pos: {x, y}, in metres to the millimetre. */
static void pack_pos(msgpack_packer *pk, double x, double y)
{
    pack_key(pk, "pos");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "x");
    msgpack_pack_double(pk, round(x * 1000) / 1000);
    pack_key(pk, "y");
    msgpack_pack_double(pk, round(y * 1000) / 1000);
}

/* Packs message `seq` of nurse d into sim.sbuf (reused): its place, whether it has a task,
 * its skills (every nurse "ward"; odd-numbered ones, nurse-01, nurse-03, .., "cardiac"). */
static void nurse_pack(struct dev *d, uint64_t seq)
{
    msgpack_packer *pk = &sim.pk;
    struct nurse *n = d->nurse;
    bool cardiac = n->index % 2 == 0;

    sim.sbuf.size = 0;
    msgpack_pack_map(pk, 7);
    pack_key(pk, "boot");
    msgpack_pack_int64(pk, sim.boot);
    pack_key(pk, "seq");
    msgpack_pack_uint64(pk, seq);
    pack_key(pk, "ts");
    msgpack_pack_int64(pk, hub_now_ms());
    pack_pos(pk, n->w.x, n->w.y);
    pack_key(pk, "busy");
    if (ward_nurse_busy(&n->w))
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    pack_key(pk, "on_shift");
    msgpack_pack_true(pk);
    pack_key(pk, "skills");
    msgpack_pack_array(pk, cardiac ? 2 : 1);
    pack_key(pk, "ward");
    if (cardiac)
        pack_key(pk, "cardiac");
}

/* Packs message `seq` of device d into sim.sbuf (reused). */
static void dev_pack(struct dev *d, uint64_t seq)
{
    msgpack_packer *pk = &sim.pk;
    unsigned m = sim.o.ecg_samples;

    if (d->nurse) {
        nurse_pack(d, seq);
        return;
    }
    dev_model_step(d);
    sim.sbuf.size = 0;
    /* its bed's place, once per connection: the twin keeps it */
    unsigned connects = sim.per_device ? atomic_load(&d->conn->connects) : 0;
    bool pos = sim.per_device && d->pos_sent != connects;
    d->pos_packed = pos ? connects : d->pos_sent;
    msgpack_pack_map(pk, 7 + (unsigned)d->sample_hz.set + (unsigned)d->hr_high.set +
                             (unsigned)d->hr_low.set + (d->rp ? 1u : 0u) + (pos ? 1u : 0u));
    if (pos) {
        double x, y;
        ward_bed_pos((unsigned)(d - sim.devs), &x, &y);
        pack_pos(pk, x, y);
    }
    /* the applied desired settings, reported back as they were asked (integer or not) */
    const struct {
        const char *key;
        const struct setting *s;
    } rep[] = {
        {"sample_hz", &d->sample_hz}, {"alarm_hr_high", &d->hr_high}, {"alarm_hr_low", &d->hr_low}};
    for (size_t i = 0; i < sizeof rep / sizeof rep[0]; i++) {
        if (!rep[i].s->set)
            continue;
        msgpack_pack_str_with_body(pk, rep[i].key, strlen(rep[i].key));
        if (rep[i].s->is_int)
            msgpack_pack_int64(pk, (int64_t)rep[i].s->v);
        else
            msgpack_pack_double(pk, rep[i].s->v);
    }
    msgpack_pack_str_with_body(pk, "boot", 4);
    msgpack_pack_int64(pk, sim.boot);
    msgpack_pack_str_with_body(pk, "seq", 3);
    msgpack_pack_uint64(pk, seq);
    msgpack_pack_str_with_body(pk, "ts", 2);
    msgpack_pack_int64(pk, hub_now_ms());
    /* a replaying device's strip comes first: its heart rate is what it finds in it */
    static int64_t strip[ECG_SAMPLES_MAX]; /* the loop thread's: one message at a time */
    if (d->rp) {
        for (unsigned i = 0; i < m; i++)
            strip[i] = lround(replay_next(d->rp));
        msgpack_pack_str_with_body(pk, "beats", 5);
        msgpack_pack_uint64(pk, d->rp->beats);
    }
    msgpack_pack_str_with_body(pk, "heart_rate", 10);
    msgpack_pack_int64(pk, lround(d->rp && d->rp->hr > 0 ? d->rp->hr : d->hr));
    msgpack_pack_str_with_body(pk, "spo2", 4);
    msgpack_pack_double(pk, round(d->spo2 * 10) / 10);
    msgpack_pack_str_with_body(pk, "temperature", 11);
    msgpack_pack_double(pk, round(d->temp * 10) / 10);
    msgpack_pack_str_with_body(pk, "ecg", 3);
    msgpack_pack_array(pk, m);
    if (d->rp) {
        for (unsigned i = 0; i < m; i++)
            msgpack_pack_int64(pk, strip[i]);
        return;
    }
    /* the strip continues from the last message: m samples at 250 Hz at the current rate */
    double step = d->hr / 60.0 / ECG_HZ;
    for (unsigned i = 0; i < m; i++) {
        uint64_t r = rng_next(&d->rng);
        d->ecg_phase += step;
        if (d->ecg_phase >= 1.0)
            d->ecg_phase -= 1.0;
        d->ecg_wander = 0.995 * d->ecg_wander + (double)((int)(r & 7) - 3.5) * 0.2;
        int v = sim.ecg_table[(int)(d->ecg_phase * ECG_TABLE) & (ECG_TABLE - 1)] +
                (int)((r >> 8) % 5) - 2 + (int)d->ecg_wander;
        msgpack_pack_int64(pk, v < -128 ? -128 : v > 127 ? 127 : v);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Windows: on_publish_done runs on a Paho thread
 * ------------------------------------------------------------------------------------------ */

/* Paho thread. Returns the slot to its connection, counts the outcome, and hands the
 * connection back to the loop if the loop was waiting for one of its slots. */
static void on_publish_done(void *ctx, int status)
{
    struct slot *s = ctx;
    struct conn *c = s->conn;

    pthread_mutex_lock(&sim.mu);
    if (status == -ECANCELED && atomic_load(&c->leaving)) {
        sim.cancelled++;
    } else if (s->dev) {
        if (status == 0) {
            sim.acked++;
            if (s->seq > s->dev->last_acked)
                s->dev->last_acked = s->seq;
        } else {
            sim.failed++;
            sim.last_fail_status = status;
        }
    } else if (status != 0) {
        sim.status_failed++;
        sim.last_fail_status = status;
    }
    s->dev = NULL;
    s->next_free = c->free;
    c->free = s;
    c->inflight--;
    sim.total_inflight--;
    bool wake = sim.wake_any;
    if (c->want_wake) {
        c->want_wake = false;
        c->ready_next = sim.ready;
        sim.ready = c;
        atomic_store_explicit(&sim.ready_pending, true, memory_order_release);
        wake = true;
    }
    if (wake && sim.waiting)
        pthread_cond_signal(&sim.cond);
    pthread_mutex_unlock(&sim.mu);
}

/* Loop thread. Takes a free slot of c, or returns NULL and asks to be woken when one frees. */
static struct slot *slot_take(struct conn *c)
{
    pthread_mutex_lock(&sim.mu);
    struct slot *s = c->free;
    if (s) {
        c->free = s->next_free;
        c->inflight++;
        sim.total_inflight++;
    } else {
        c->want_wake = true;
    }
    pthread_mutex_unlock(&sim.mu);
    return s;
}

static void slot_put_back(struct slot *s)
{
    struct conn *c = s->conn;
    pthread_mutex_lock(&sim.mu);
    s->dev = NULL;
    s->next_free = c->free;
    c->free = s;
    c->inflight--;
    sim.total_inflight--;
    pthread_mutex_unlock(&sim.mu);
}

/* Loop thread. Waits on sim.cond until `until` (monotonic ns), a signal, or a completion.
 * With `need_ready`, returns at once if a connection has been handed back. */
static void loop_wait(int64_t until, bool need_ready)
{
    int64_t now = mono_ns();
    if (until > now + MAX_WAIT_NS)
        until = now + MAX_WAIT_NS;
    if (until <= now)
        return;
    struct timespec ts = {.tv_sec = until / NS_PER_S, .tv_nsec = until % NS_PER_S};
    pthread_mutex_lock(&sim.mu);
    if (!(need_ready && sim.ready) && !stop_signals) {
        sim.waiting = true;
        pthread_cond_timedwait(&sim.cond, &sim.mu, &ts);
        sim.waiting = false;
    }
    pthread_mutex_unlock(&sim.mu);
}

/* ---------------------------------------------------------------------------------------------
 * Logging (quiet drops everything but fatal errors)
 * ------------------------------------------------------------------------------------------ */

/* Paho thread. The bridge's info lines (connecting, connected, disconnected) are summed up by
 * main() and on_connection; its warnings and errors are logged, each text once in a row, so a
 * fleet of connections hitting the same condition logs it once. */
static void on_log(void *ctx, enum bridge_log_level level, const char *msg)
{
    static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    static char last[256];
    struct conn *c = ctx;
    char q[320];

    if (sim.o.quiet || level >= BRIDGE_LOG_INFO)
        return;
    pthread_mutex_lock(&mu);
    bool repeat = strncmp(last, msg, sizeof last - 1) == 0;
    if (!repeat)
        snprintf(last, sizeof last, "%s", msg);
    pthread_mutex_unlock(&mu);
    if (repeat)
        return;
    log_write(level == BRIDGE_LOG_ERROR ? LOG_ERROR : LOG_WARN, "bridge", "client=%s detail=%s",
              c->client_id, log_quote(q, sizeof q, msg, strlen(msg)));
}

/* Paho thread. The first connect of each connection is summed up by main(); later changes
 * are logged one by one. */
static void on_connection(void *ctx, bool connected, const char *reason)
{
    struct conn *c = ctx;
    char q[320];
    if (connected)
        atomic_fetch_add(&c->connects, 1); /* its monitor reports its bed again */
    if (connected && !atomic_exchange(&c->ever_connected, true))
        return;
    if (sim.o.quiet)
        return;
    if (connected)
        log_info("reconnected", "client=%s", c->client_id);
    else
        log_warn("connection lost", "client=%s reason=%s", c->client_id,
                 log_quote(q, sizeof q, reason ? reason : "", reason ? strlen(reason) : 0));
}

/* Paho thread. Only records the message: the loop thread handles it (and publishes). */
static void on_message(void *ctx, const struct bridge_msg *m)
{
    struct conn *c = ctx;
    struct bridge_topic t;
    char err[BRIDGE_ERR_LEN];

    if (!sim.per_device || bridge_topic_parse(&sim.topics, m->topic, m->topic_len, &t, err) < 0)
        return;
    if (t.kind != BRIDGE_T_DESIRED && t.kind != BRIDGE_T_COMMANDS)
        return;
    struct dev *d = &sim.devs[c->index];
    if (t.id_len != strlen(d->id) || memcmp(t.id, d->id, t.id_len) != 0)
        return;
    if (t.kind == BRIDGE_T_DESIRED && d->nurse)
        return; /* a nurse obeys commands only */
    struct inmsg *im = malloc(sizeof *im + m->len + 1);
    if (!im)
        return;
    im->dev = d;
    im->kind = t.kind;
    im->len = m->len;
    if (m->len)
        memcpy(im->payload, m->payload, m->len);
    pthread_mutex_lock(&sim.mu);
    im->next = sim.inbox;
    sim.inbox = im;
    atomic_store_explicit(&sim.inbox_pending, true, memory_order_release);
    if (sim.waiting)
        pthread_cond_signal(&sim.cond);
    pthread_mutex_unlock(&sim.mu);
}

/* ---------------------------------------------------------------------------------------------
 * Scheduling (loop thread)
 * ------------------------------------------------------------------------------------------ */

static void heap_push(struct dev *d)
{
    unsigned i = sim.heap_len++;
    while (i > 0) {
        unsigned p = (i - 1) / 2;
        if (sim.heap[p]->deadline <= d->deadline)
            break;
        sim.heap[i] = sim.heap[p];
        i = p;
    }
    sim.heap[i] = d;
}

static struct dev *heap_pop(void)
{
    struct dev *top = sim.heap[0], *last = sim.heap[--sim.heap_len];
    unsigned i = 0, n = sim.heap_len;
    for (;;) {
        unsigned l = 2 * i + 1, m = i;
        int64_t best = last->deadline;
        if (l < n && sim.heap[l]->deadline < best) {
            m = l;
            best = sim.heap[l]->deadline;
        }
        if (l + 1 < n && sim.heap[l + 1]->deadline < best)
            m = l + 1;
        if (m == i)
            break;
        sim.heap[i] = sim.heap[m];
        i = m;
    }
    if (n > 0)
        sim.heap[i] = last;
    return top;
}

static void ring_push(struct conn *c)
{
    sim.ring[(sim.ring_head + sim.ring_len) % sim.n_conns] = c;
    sim.ring_len++;
    c->in_ring = true;
}

static struct conn *ring_pop(void)
{
    struct conn *c = sim.ring[sim.ring_head];
    sim.ring_head = (sim.ring_head + 1) % sim.n_conns;
    sim.ring_len--;
    c->in_ring = false;
    return c;
}

/* A connection with due devices goes on the ring unless it is parked or already there. */
static void conn_activate(struct conn *c)
{
    if (!c->in_ring && !c->parked && c->due_head)
        ring_push(c);
}

static void due_push(struct dev *d)
{
    struct conn *c = d->conn;
    d->next = NULL;
    if (c->due_tail)
        c->due_tail->next = d;
    else
        c->due_head = d;
    c->due_tail = d;
    conn_activate(c);
}

static void due_pop(struct conn *c)
{
    c->due_head = c->due_head->next;
    if (!c->due_head)
        c->due_tail = NULL;
}

static int64_t dev_deadline(const struct dev *d, int64_t start)
{
    (void)start;
    return d->base_ns + (int64_t)(((double)(d->k - d->k0) + d->slot) * (double)d->period_ns);
}

/* After device d issued (or gave up) message k: schedule the next one, or retire it. A nurse's
 * next one is a period from now, unless it changes before (nurses_step). */
static void dev_advance(struct dev *d, int64_t start, int64_t now, unsigned *done)
{
    d->k++;
    d->refused = false;
    if (d->nurse) {
        d->nurse->queued = false;
        d->nurse->next_pub = now + sim.nurse_period_ns;
        if (d->nurse->dirty || d->nurse->next_pub < sim.nurse_wake)
            sim.nurse_wake = d->nurse->dirty ? now : d->nurse->next_pub;
        return;
    }
    if (sim.o.count && d->k >= sim.o.count) {
        d->done = true;
        (*done)++;
        return;
    }
    if (sim.o.rate <= 0) {
        due_push(d);
        return;
    }
    d->deadline = dev_deadline(d, start);
    if (d->deadline <= now)
        due_push(d); /* behind: catch up, the schedule is absolute */
    else
        heap_push(d);
}

/* Publishes the next message of the device at the head of c's queue. Returns 0, -EAGAIN
 * (window full: c is parked until a slot frees), or another negative code (refused; the same
 * seq is tried again after RETRY_NS). */
static int conn_publish_next(struct conn *c)
{
    struct dev *d = c->due_head;
    struct slot *s = slot_take(c);
    if (!s) {
        c->parked = true;
        return -EAGAIN;
    }
    s->dev = d;
    s->seq = d->k + 1;
    dev_pack(d, s->seq);
    int r = bridge_client_publish(c->client, d->topic, sim.sbuf.data, sim.sbuf.size, sim.o.qos,
                                  false, NULL, on_publish_done, s);
    if (r < 0) {
        slot_put_back(s);
        return r;
    }
    d->pos_sent = d->pos_packed;
    sim.sent++;
    return 0;
}

/* Takes back the connections whose slots freed while they were parked. */
static void take_ready(void)
{
    if (!atomic_load_explicit(&sim.ready_pending, memory_order_acquire))
        return;
    pthread_mutex_lock(&sim.mu);
    struct conn *list = sim.ready;
    sim.ready = NULL;
    atomic_store_explicit(&sim.ready_pending, false, memory_order_relaxed);
    pthread_mutex_unlock(&sim.mu);
    while (list) {
        struct conn *c = list;
        list = c->ready_next;
        c->parked = c->offline;
        conn_activate(c);
    }
}

static void log_failures(uint64_t *reported)
{
    pthread_mutex_lock(&sim.mu);
    uint64_t failed = sim.failed;
    int status = sim.last_fail_status;
    pthread_mutex_unlock(&sim.mu);
    if (failed > *reported && !sim.o.quiet)
        log_warn("publishes failed", "new=%" PRIu64 " total=%" PRIu64 " last_error=\"%s\"",
                 failed - *reported, failed, strerror(-status));
    *reported = failed;
}

/* ---------------------------------------------------------------------------------------------
 * Obeying the twin (loop thread; one connection per device only)
 * ------------------------------------------------------------------------------------------ */

static int conn_client_new(unsigned i);

#define HZ_MIN 0.1
#define HZ_MAX 100.0

static const msgpack_object *map_get(const msgpack_object *map, const char *key)
{
    if (!map || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t n = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n &&
            memcmp(k->via.str.ptr, key, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

/* A number: 0 with *v and *is_int set, or -EINVAL. */
static int obj_number(const msgpack_object *o, double *v, bool *is_int)
{
    if (!o)
        return -EINVAL;
    switch (o->type) {
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        *v = (double)o->via.u64;
        *is_int = true;
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        *v = (double)o->via.i64;
        *is_int = true;
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        if (!isfinite(o->via.f64))
            return -EINVAL;
        *v = o->via.f64;
        *is_int = false;
        return 0;
    default:
        return -EINVAL;
    }
}

/* Sets device d's rate (clamped to HZ_MIN..HZ_MAX) from now on; returns the applied rate. With
 * --rate 0 (as fast as possible) the rate is stored and reported but does not pace. */
static double dev_set_rate(struct dev *d, double hz, bool is_int, int64_t start, int64_t now)
{
    double applied = clampd(hz, HZ_MIN, HZ_MAX);
    d->sample_hz.set = true;
    d->sample_hz.is_int = is_int && applied == hz;
    d->sample_hz.v = applied;
    (void)start;
    if (sim.o.rate > 0) {
        d->period_ns = (int64_t)llround(1e9 / applied);
        d->base_ns = now;
        d->k0 = d->k;
        d->slot = 0;
        /* a deadline already in the heap stays; the next one follows the new rate */
    }
    return applied;
}

static void apply_desired(struct dev *d, const msgpack_object *root, int64_t start, int64_t now)
{
    const msgpack_object *delta = map_get(root, "delta");
    double v;
    bool is_int;

    if (!delta || delta->type != MSGPACK_OBJECT_MAP)
        return; /* empty: in sync */
    if (obj_number(map_get(delta, "sample_hz"), &v, &is_int) == 0)
        dev_set_rate(d, v, is_int, start, now);
    if (obj_number(map_get(delta, "alarm_hr_high"), &v, &is_int) == 0)
        d->hr_high = (struct setting){.set = true, .is_int = is_int, .v = v};
    if (obj_number(map_get(delta, "alarm_hr_low"), &v, &is_int) == 0)
        d->hr_low = (struct setting){.set = true, .is_int = is_int, .v = v};
    /* other keys are ignored: they stay in the delta, which shows they were not applied */
}

/* Starts an ack {id, status, result?} in sim.abuf: the command's id is `id`, or (id NULL) the
 * msgpack in raw[0..raw_len). With n_result > 0, result is a map of that many pairs, which
 * the caller packs next; then ack_publish. */
static msgpack_packer *ack_start(const msgpack_object *id, const void *raw, size_t raw_len,
                                 const char *status, unsigned n_result)
{
    msgpack_packer *pk = &sim.apk;
    sim.abuf.size = 0;
    msgpack_pack_map(pk, n_result ? 3 : 2);
    pack_key(pk, "id");
    if (id)
        msgpack_pack_object(pk, *id);
    else
        msgpack_sbuffer_write(&sim.abuf, raw, raw_len);
    pack_key(pk, "status");
    pack_key(pk, status);
    if (n_result) {
        pack_key(pk, "result");
        msgpack_pack_map(pk, n_result);
    }
    return pk;
}

static void ack_publish(struct dev *d, const char *status);

/* Publishes {id, status, result?} on d's ack topic (QoS 1, fire and forget: the hub re-sends
 * a command that is still pending when the device comes back). With rkey, result is the map
 * {rkey: rstr}, or {rkey: true} with rbool_true, or {rkey: rnum}. */
static void send_ack(struct dev *d, const msgpack_object *id, const char *status, const char *rkey,
                     const char *rstr, double rnum, bool rbool_true)
{
    msgpack_packer *pk = ack_start(id, NULL, 0, status, rkey ? 1 : 0);
    if (rkey) {
        pack_key(pk, rkey);
        if (rstr)
            msgpack_pack_str_with_body(pk, rstr, strlen(rstr));
        else if (rbool_true)
            msgpack_pack_true(pk);
        else
            msgpack_pack_double(pk, rnum);
    }
    ack_publish(d, status);
}

/* Publishes the ack in sim.abuf (ack_start) on d's ack topic, unless d is offline. */
static void ack_publish(struct dev *d, const char *status)
{
    struct conn *c = d->conn;
    if (c->offline || !c->client)
        return;
    int r = bridge_client_publish(c->client, d->ack_topic, sim.abuf.data, sim.abuf.size, 1, false,
                                  NULL, NULL, NULL);
    if (r < 0 && !sim.o.quiet)
        log_warn("command ack not published", "device=%s status=%s error=\"%s\"", d->id, status,
                 strerror(-r));
}

/* Takes device d's connection down for `seconds`: the last word is its "offline" status (what
 * its will says; the bridge has no way to drop a connection without a DISCONNECT, so the will
 * itself does not fire), then nothing until it reconnects and its birth says "online". */
static void dev_go_offline(struct dev *d, double seconds, int64_t now)
{
    struct conn *c = d->conn;
    if (c->offline)
        return;
    atomic_store(&c->leaving, true);
    struct bridge_final fin = {
        .topic = d->status_topic, .payload = "offline", .len = 7, .retained = true, .qos = 1};
    bridge_client_stop(c->client, &fin, 1000);
    bridge_client_free(c->client);
    c->client = NULL;
    atomic_store(&c->leaving, false);
    c->offline = true;
    c->reconnecting = false;
    c->offline_until = now + (int64_t)(seconds * (double)NS_PER_S);
    sim.n_offline++;
    if (!sim.o.quiet)
        log_info("device offline", "device=%s seconds=%.1f", d->id, seconds);
}

/* Connection i, offline on purpose, is connected again: back in the schedule. */
static void conn_back_online(unsigned i)
{
    struct conn *c = &sim.conns[i];
    c->offline = false;
    c->reconnecting = false;
    c->parked = false;
    sim.n_offline--;
    conn_activate(c);
    if (!sim.o.quiet)
        log_info("device back online", "device=%s", sim.devs[i].id);
}

/* Offline connections: reconnect when their time is up; back in the schedule once connected. */
static void offline_step(int64_t now)
{
    char err[BRIDGE_ERR_LEN];
    for (unsigned i = 0; i < sim.n_conns && sim.n_offline; i++) {
        struct conn *c = &sim.conns[i];
        if (!c->offline)
            continue;
        if (!c->reconnecting) {
            if (now < c->offline_until)
                continue;
            if (conn_client_new(i) < 0 || bridge_client_start(c->client, err) < 0) {
                if (c->client) {
                    bridge_client_free(c->client);
                    c->client = NULL;
                }
                c->offline_until = now + NS_PER_S; /* try again */
                continue;
            }
            c->reconnecting = true;
            continue;
        }
        if (!bridge_client_connected(c->client))
            continue;
        conn_back_online(i);
    }
}

/* --flaky: checked once a second, so P per minute is 1 - (1 - P)^(1/60) per check. */
static void flaky_step(int64_t now)
{
    double p = 1.0 - pow(1.0 - (sim.o.flaky > 0.999 ? 0.999 : sim.o.flaky), 1.0 / 60.0);
    for (unsigned i = 0; i < sim.n_mon; i++) {
        if (sim.conns[i].offline || rng_unit(&sim.flaky_rng) >= p)
            continue;
        dev_go_offline(&sim.devs[i], 2 + 4 * rng_unit(&sim.flaky_rng), now);
    }
}

/* A failed ack, remembered as failed for a repeat of the same id. */
static void fail_ack(struct seen_cmd *seen, struct dev *d, const msgpack_object *id,
                     const char *rkey, const char *rstr, double rnum, bool rbool_true)
{
    if (seen)
        seen->ok = false;
    send_ack(d, id, "failed", rkey, rstr, rnum, rbool_true);
}

static bool obj_str_eq(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* ---------------------------------------------------------------------------------------------
 * Nurses (loop thread): commands attend and cancel, the model's events, the telemetry schedule
 * ------------------------------------------------------------------------------------------ */

/* The remembered command whose packed id is ref[0..len), or NULL. */
static struct seen_cmd *seen_find(struct dev *d, const void *ref, size_t len)
{
    for (unsigned i = 0; i < CMD_SEEN; i++)
        if (d->seen[i].len && d->seen[i].len == len && memcmp(d->seen[i].id, ref, len) == 0)
            return &d->seen[i];
    return NULL;
}

/* One of this process's monitors by id, or NULL. */
static struct dev *monitor_find(const char *id)
{
    for (unsigned i = 0; i < sim.n_mon; i++)
        if (strcmp(sim.devs[i].id, id) == 0)
            return &sim.devs[i];
    return NULL;
}

static double ns_to_s(int64_t ns)
{
    return (double)ns / (double)NS_PER_S;
}

/* The final ack of a task: succeeded {demand, walked_m, waited_ms?} (waited_ms when it waited
 * behind another task), or failed {error: "cancelled"}. A repeat of its command is answered
 * the same way (seen). */
static void task_ack(struct dev *d, const struct ward_task *t, bool ok)
{
    struct seen_cmd *seen = seen_find(d, t->ref, t->ref_len);
    if (seen)
        seen->ok = ok;
    if (!ok) {
        msgpack_packer *pk = ack_start(NULL, t->ref, t->ref_len, "failed", 1);
        pack_key(pk, "error");
        pack_key(pk, "cancelled");
        ack_publish(d, "failed");
        return;
    }
    int64_t waited = t->started_ns - t->queued_ns;
    msgpack_packer *pk = ack_start(NULL, t->ref, t->ref_len, "succeeded", waited > 0 ? 3 : 2);
    pack_key(pk, "demand");
    pack_key(pk, t->demand);
    pack_key(pk, "walked_m");
    msgpack_pack_double(pk, round(t->walked_m * 100) / 100);
    if (waited > 0) {
        pack_key(pk, "waited_ms");
        msgpack_pack_int64(pk, waited / NS_PER_MS);
    }
    ack_publish(d, "succeeded");
}

/* One event of nurse d's model: the walk begins, she arrives, or the service ends: the command
 * succeeds and, if the demand is one of our monitors, she has treated the patient: its
 * tachycardia ends and none starts for a minute. */
static void nurse_event(struct dev *d, const struct ward_event *ev)
{
    const struct ward_task *t = &ev->task;
    char q[WARD_DEMAND_MAX * 4 + 3];
    log_quote(q, sizeof q, t->demand, strlen(t->demand));
    switch (ev->kind) {
    case WARD_EV_WALK:
        if (t->started_ns > t->queued_ns && !sim.o.quiet)
            log_info("nurse sets off", "device=%s demand=%s waited_s=%.1f", d->id, q,
                     ns_to_s(t->started_ns - t->queued_ns));
        break;
    case WARD_EV_ARRIVE:
        if (!sim.o.quiet)
            log_info("nurse arrived", "device=%s demand=%s walked_m=%.1f seconds=%.1f treats=%s",
                     d->id, q, t->walked_m, ns_to_s(t->arrived_ns - t->started_ns),
                     monitor_find(t->demand) ? "true" : "false");
        break;
    case WARD_EV_DONE: {
        if (!sim.o.quiet)
            log_info("nurse finished", "device=%s demand=%s walked_m=%.1f seconds=%.1f", d->id, q,
                     t->walked_m, ns_to_s(ev->at_ns - t->queued_ns));
        /* done first (the hub hears it before the alarm resolves), then the patient is well:
         * the episode ends, and none starts for a minute (or the service time, if longer) */
        task_ack(d, t, true);
        struct dev *m = monitor_find(t->demand);
        if (m) {
            int64_t calm = d->nurse->w.service_ns > 60 * NS_PER_S ? d->nurse->w.service_ns
                                                                   : 60 * NS_PER_S;
            m->episode_left = 0;
            m->hr = m->hr_base;
            m->calm_until = ev->at_ns + calm;
            if (m->calm_until == 0)
                m->calm_until = 1;
        }
        break;
    }
    }
}

/* Nurse d's model up to now; a change of busy is published at once. */
static void nurse_catch_up(struct dev *d, int64_t now)
{
    struct nurse *n = d->nurse;
    bool busy = ward_nurse_busy(&n->w);
    struct ward_event ev;
    while (ward_nurse_step(&n->w, now, &ev))
        nurse_event(d, &ev);
    if (busy != ward_nurse_busy(&n->w))
        n->dirty = true;
}

/* args.demand, a twin id, into out (WARD_DEMAND_MAX + 1); false when it is not one. */
static bool arg_demand(const msgpack_object *args, char *out)
{
    const msgpack_object *o = map_get(args, "demand");
    if (!o || o->type != MSGPACK_OBJECT_STR || o->via.str.size > WARD_DEMAND_MAX ||
        !bridge_id_valid(o->via.str.ptr, o->via.str.size))
        return false;
    memcpy(out, o->via.str.ptr, o->via.str.size);
    out[o->via.str.size] = '\0';
    return true;
}

/* attend {demand, x, y}: queued (delivered was sent); acknowledged again when it is served.
 * ref[0..ref_len) is the command's id, packed (0: too long to keep). */
static void nurse_attend(struct dev *d, struct seen_cmd *seen, const msgpack_object *id,
                         const unsigned char *ref, size_t ref_len, const msgpack_object *args,
                         int64_t now)
{
    struct nurse *n = d->nurse;
    struct ward_task t;
    bool is_int;

    memset(&t, 0, sizeof t);
    if (!arg_demand(args, t.demand)) {
        fail_ack(seen, d, id, "error", "args.demand: expected a twin id (a string)", 0, false);
        return;
    }
    if (obj_number(map_get(args, "x"), &t.x, &is_int) < 0) {
        fail_ack(seen, d, id, "error", "args.x: expected a number (metres)", 0, false);
        return;
    }
    if (obj_number(map_get(args, "y"), &t.y, &is_int) < 0) {
        fail_ack(seen, d, id, "error", "args.y: expected a number (metres)", 0, false);
        return;
    }
    if (ref_len == 0) {
        fail_ack(seen, d, id, "error", "id: too long to keep for a task", 0, false);
        return;
    }
    memcpy(t.ref, ref, ref_len);
    t.ref_len = ref_len;
    nurse_catch_up(d, now);
    bool busy = ward_nurse_busy(&n->w);
    if (ward_nurse_attend(&n->w, &t, now) < 0) {
        fail_ack(seen, d, id, "error", "the nurse has 16 tasks already", 0, false);
        return;
    }
    if (!busy)
        n->dirty = true;
    sim.nurse_wake = now;
    if (!sim.o.quiet) {
        /* the walk starts from here, or from the task before it */
        const struct ward_task *prev =
            n->w.len > 1 ? &n->w.task[(n->w.head + n->w.len - 2) % WARD_QUEUE_MAX] : NULL;
        double fx = prev ? prev->x : n->w.x, fy = prev ? prev->y : n->w.y;
        char q[WARD_DEMAND_MAX * 4 + 3];
        log_info("nurse task", "device=%s demand=%s x=%.2f y=%.2f distance_m=%.1f tasks=%u", d->id,
                 log_quote(q, sizeof q, t.demand, strlen(t.demand)), t.x, t.y,
                 hypot(t.x - fx, t.y - fy), n->w.len);
    }
}

/* cancel {demand}: its tasks waiting or being walked to are dropped (their attend fails with
 * "cancelled"); one being served finishes. */
static void nurse_cancel(struct dev *d, struct seen_cmd *seen, const msgpack_object *id,
                         const msgpack_object *args, int64_t now)
{
    struct nurse *n = d->nurse;
    struct ward_task dropped[WARD_QUEUE_MAX];
    char demand[WARD_DEMAND_MAX + 1];

    if (!arg_demand(args, demand)) {
        fail_ack(seen, d, id, "error", "args.demand: expected a twin id (a string)", 0, false);
        return;
    }
    nurse_catch_up(d, now);
    bool busy = ward_nurse_busy(&n->w);
    unsigned nd = ward_nurse_cancel(&n->w, demand, now, dropped);
    for (unsigned i = 0; i < nd; i++) {
        if (!sim.o.quiet) {
            char q[WARD_DEMAND_MAX * 4 + 3];
            log_info("nurse task cancelled", "device=%s demand=%s walked_m=%.1f seconds=%.1f",
                     d->id, log_quote(q, sizeof q, demand, strlen(demand)), dropped[i].walked_m,
                     ns_to_s(now - dropped[i].queued_ns));
        }
        task_ack(d, &dropped[i], false);
    }
    if (busy != ward_nurse_busy(&n->w))
        n->dirty = true;
    sim.nurse_wake = now;
    msgpack_packer *pk = ack_start(id, NULL, 0, "succeeded", 1);
    pack_key(pk, "cancelled");
    if (nd)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
    ack_publish(d, "succeeded");
}

/* Every nurse's model up to now, and the telemetry of those that are due (a period since the
 * last, or busy changed) into their connections' due queues. Returns when it is next needed. */
static int64_t nurses_step(int64_t now)
{
    int64_t next = INT64_MAX;
    for (unsigned j = 0; j < sim.n_nurses; j++) {
        struct dev *d = &sim.devs[sim.n_mon + j];
        struct nurse *n = d->nurse;
        nurse_catch_up(d, now);
        if (n->queued) {
            n->dirty = false; /* not packed yet: it will say so */
        } else if (n->dirty || now >= n->next_pub) {
            n->dirty = false;
            n->queued = true;
            due_push(d);
        }
        int64_t t = ward_nurse_next_ns(&n->w);
        if (!n->queued && n->next_pub < t)
            t = n->next_pub;
        if (t < next)
            next = t;
    }
    return next;
}

static void run_command(struct dev *d, const msgpack_object *root, int64_t start, int64_t now)
{
    const msgpack_object *id = map_get(root, "id");
    const msgpack_object *cmd = map_get(root, "cmd");
    const msgpack_object *args = map_get(root, "args");
    const msgpack_object *expires = map_get(root, "expires");
    double v;
    bool is_int;

    if (!id || id->type == MSGPACK_OBJECT_NIL)
        return; /* nothing to acknowledge */
    send_ack(d, id, "delivered", NULL, NULL, 0, false);
    /* the id as packed bytes, to recognize a repeat */
    msgpack_sbuffer idb;
    msgpack_packer ipk;
    msgpack_sbuffer_init(&idb);
    msgpack_packer_init(&ipk, &idb, msgpack_sbuffer_write);
    msgpack_pack_object(&ipk, *id);
    unsigned char ref[WARD_REF_MAX]; /* a nurse's task keeps it, for its final ack */
    size_t ref_len = idb.size <= sizeof ref ? idb.size : 0;
    if (ref_len)
        memcpy(ref, idb.data, ref_len);
    if (d->nurse && ref_len && ward_nurse_find(&d->nurse->w, ref, ref_len)) {
        msgpack_sbuffer_destroy(&idb);
        return; /* a task under way: acknowledged when it ends */
    }
    struct seen_cmd *seen = seen_find(d, idb.data, idb.size);
    if (seen) {
        msgpack_sbuffer_destroy(&idb);
        /* a repeat (at least once delivery): acknowledge the outcome again, run nothing */
        send_ack(d, id, seen->ok ? "succeeded" : "failed", seen->ok ? NULL : "error",
                 seen->ok ? NULL : "repeated command", 0, false);
        return;
    }
    if (idb.size <= CMD_ID_MAX) {
        struct seen_cmd *sc = &d->seen[d->seen_next++ % CMD_SEEN];
        memcpy(sc->id, idb.data, idb.size);
        sc->len = idb.size;
        sc->ok = true;
        seen = sc;
    }
    msgpack_sbuffer_destroy(&idb);
    if (obj_number(expires, &v, &is_int) == 0 && v > 0 && v < (double)hub_now_ms()) {
        fail_ack(seen, d, id, "error", "expired", 0, false);
        return;
    }
    if (d->nurse && obj_str_eq(cmd, "attend")) {
        nurse_attend(d, seen, id, ref, ref_len, args, now);
    } else if (d->nurse && obj_str_eq(cmd, "cancel")) {
        nurse_cancel(d, seen, id, args, now);
    } else if (obj_str_eq(cmd, "ping")) {
        send_ack(d, id, "succeeded", "pong", NULL, 0, true);
    } else if (!d->nurse && obj_str_eq(cmd, "set_rate")) {
        if (obj_number(map_get(args, "hz"), &v, &is_int) < 0 || v <= 0) {
            fail_ack(seen, d, id, "error", "args.hz: expected a positive number", 0, false);
            return;
        }
        double applied = dev_set_rate(d, v, is_int, start, now);
        send_ack(d, id, "succeeded", "hz", NULL, applied, false);
    } else if (!d->nurse && obj_str_eq(cmd, "alert")) {
        /* the monitor's alarm (what the demo's rules send): sounded at args.level, default high */
        static const char *const levels[] = {"low", "medium", "high", "critical"};
        const msgpack_object *level = map_get(args, "level"), *reason = map_get(args, "reason");
        const char *lv = level ? NULL : "high";
        for (size_t i = 0; level && i < sizeof levels / sizeof levels[0]; i++)
            if (obj_str_eq(level, levels[i]))
                lv = levels[i];
        if (!lv) {
            fail_ack(seen, d, id, "error", "args.level: expected low, medium, high or critical",
                     0, false);
            return;
        }
        if (!sim.o.quiet) {
            char q[160];
            bool rs = reason && reason->type == MSGPACK_OBJECT_STR;
            log_info("alert", "device=%s level=%s reason=%s", d->id, lv,
                     log_quote(q, sizeof q, rs ? reason->via.str.ptr : "",
                               rs ? reason->via.str.size : 0));
        }
        send_ack(d, id, "succeeded", "alarm", lv, 0, false);
    } else if (obj_str_eq(cmd, "go_offline")) {
        if (obj_number(map_get(args, "seconds"), &v, &is_int) < 0 || v < 0 || v > 3600) {
            fail_ack(seen, d, id, "error", "args.seconds: expected 0..3600", 0, false);
            return;
        }
        send_ack(d, id, "succeeded", "seconds", NULL, v, false);
        dev_go_offline(d, v, now);
    } else {
        fail_ack(seen, d, id, "error", "unknown command", 0, false);
    }
}

/* Handles what on_message recorded, oldest first. */
static void inbox_run(int64_t start, int64_t now)
{
    pthread_mutex_lock(&sim.mu);
    struct inmsg *list = sim.inbox, *fifo = NULL;
    sim.inbox = NULL;
    atomic_store_explicit(&sim.inbox_pending, false, memory_order_relaxed);
    pthread_mutex_unlock(&sim.mu);
    while (list) {
        struct inmsg *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        struct inmsg *im = fifo;
        fifo = im->next;
        msgpack_unpacked up;
        msgpack_unpacked_init(&up);
        size_t off = 0;
        if (im->len &&
            msgpack_unpack_next(&up, im->payload, im->len, &off) == MSGPACK_UNPACK_SUCCESS &&
            up.data.type == MSGPACK_OBJECT_MAP) {
            /* A message can only come from a live client: one on a connection still marked
             * offline came from its new client, which is up (its subscriptions are answered
             * before its "online" goes out, and the hub answers that with the delta and the
             * queued commands): back online now, not at the next offline_step, or they are lost
             * (a command would never be acknowledged). A connection gone offline since the
             * message came has no client: the hub sends it again at its next "online". */
            struct conn *c = im->dev->conn;
            if (c->offline && c->reconnecting && c->client && bridge_client_connected(c->client))
                conn_back_online(c->index);
            if (im->kind == BRIDGE_T_DESIRED)
                apply_desired(im->dev, &up.data, start, now);
            else if (!c->offline)
                run_command(im->dev, &up.data, start, now);
        }
        msgpack_unpacked_destroy(&up);
        free(im);
    }
}

/* The sending phase. Returns when every device has sent --count, at --seconds, or on a
 * signal. */
static void run(int64_t start)
{
    int64_t end = sim.o.seconds > 0 ? start + (int64_t)(sim.o.seconds * NS_PER_S) : INT64_MAX;
    int64_t next_report = start + NS_PER_S, last_refusal_log = 0;
    uint64_t reported_failures = 0;
    unsigned done = 0;
    int64_t next_flaky = start + NS_PER_S, next_offline_check = start;

    for (unsigned j = 0; j < sim.n_nurses; j++)
        sim.nurses[j].next_pub = start; /* nurses_step queues their first message */
    sim.nurse_wake = start;
    for (unsigned i = 0; i < sim.n_mon; i++) {
        struct dev *d = &sim.devs[i];
        d->slot = (double)i / sim.n_mon;
        d->base_ns = start;
        d->k0 = 0;
        d->period_ns = sim.period_ns;
        if (sim.o.rate > 0) {
            d->deadline = dev_deadline(d, start);
            heap_push(d);
        } else {
            due_push(d);
        }
    }

    while (!stop_signals && done < sim.n_mon) {
        int64_t now = mono_ns();
        if (now >= end)
            break;
        if (now >= next_report) {
            log_failures(&reported_failures);
            next_report = now + NS_PER_S;
        }
        if (atomic_load_explicit(&sim.inbox_pending, memory_order_acquire))
            inbox_run(start, now);
        if (sim.per_device) {
            if (sim.o.flaky > 0 && now >= next_flaky) {
                flaky_step(now);
                next_flaky = now + NS_PER_S;
            }
            if (sim.n_offline && now >= next_offline_check) {
                offline_step(now);
                next_offline_check = now + 100 * NS_PER_MS;
            }
        }
        if (sim.n_nurses && now >= sim.nurse_wake)
            sim.nurse_wake = nurses_step(now);
        while (sim.heap_len && sim.heap[0]->deadline <= now)
            due_push(heap_pop());
        take_ready();

        /* one pass over the ring: at most one message per connection, round robin */
        unsigned n = sim.ring_len, published = 0;
        int64_t wake = sim.heap_len ? sim.heap[0]->deadline : INT64_MAX;
        if (sim.n_nurses && sim.nurse_wake < wake)
            wake = sim.nurse_wake;
        for (unsigned j = 0; j < n; j++) {
            struct conn *c = ring_pop();
            if (c->offline) {
                c->parked = true; /* its devices wait, and catch up when it is back */
                continue;
            }
            if (c->retry_at > now) {
                if (c->retry_at < wake)
                    wake = c->retry_at;
                ring_push(c);
                continue;
            }
            struct dev *d = c->due_head;
            int r = conn_publish_next(c);
            if (r == -EAGAIN)
                continue; /* parked */
            if (r == -EINVAL) {
                /* cannot happen with the topics built at start; never retried */
                due_pop(c);
                sim.dropped++;
                if (!sim.o.quiet)
                    log_error("publish rejected", "device=%s", d->id);
                dev_advance(d, start, now, &done);
                conn_activate(c);
                continue;
            }
            if (r < 0) {
                sim.refused++;
                d->refused = true;
                c->retry_at = now + RETRY_NS;
                if (c->retry_at < wake)
                    wake = c->retry_at;
                if (!sim.o.quiet && now - last_refusal_log >= NS_PER_S) {
                    log_warn("publish refused, retrying", "client=%s error=\"%s\"", c->client_id,
                             strerror(-r));
                    last_refusal_log = now;
                }
                ring_push(c);
                continue;
            }
            published++;
            due_pop(c);
            dev_advance(d, start, now, &done);
            conn_activate(c);
        }
        if (published)
            continue;
        loop_wait(wake < end ? wake : end, true);
    }
    log_failures(&reported_failures);
}

/* ---------------------------------------------------------------------------------------------
 * Status messages when devices share connections, and the end
 * ------------------------------------------------------------------------------------------ */

static void wake_any_set(bool on)
{
    pthread_mutex_lock(&sim.mu);
    sim.wake_any = on;
    pthread_mutex_unlock(&sim.mu);
}

/* Publishes `payload` retained at QoS 1 on every device's status topic, through the windows.
 * Gives up at `deadline` (monotonic ns) or on a second signal. Returns how many were not
 * published. */
static unsigned publish_status_all(const char *payload, int64_t deadline)
{
    unsigned missed = 0;
    wake_any_set(true);
    for (unsigned i = 0; i < sim.n_devs; i++) {
        struct dev *d = &sim.devs[i];
        for (;;) {
            if (mono_ns() >= deadline || stop_signals > 1) {
                missed++;
                break;
            }
            take_ready();
            struct slot *s = slot_take(d->conn);
            if (!s) {
                loop_wait(deadline, true);
                continue;
            }
            s->dev = NULL;
            int r = bridge_client_publish(d->conn->client, d->status_topic, payload,
                                          strlen(payload), 1, true, NULL, on_publish_done, s);
            if (r == 0)
                break;
            slot_put_back(s);
            if (r == -EINVAL) {
                missed++;
                break;
            }
            loop_wait(mono_ns() + RETRY_NS, false);
        }
    }
    take_ready();
    for (unsigned i = 0; i < sim.n_conns; i++)
        sim.conns[i].parked = false;
    wake_any_set(false);
    return missed;
}

/* Waits until nothing is in flight, `deadline` passes, or a second signal arrives. */
static void drain(int64_t deadline)
{
    wake_any_set(true);
    for (;;) {
        pthread_mutex_lock(&sim.mu);
        uint64_t inflight = sim.total_inflight;
        pthread_mutex_unlock(&sim.mu);
        if (inflight == 0 || mono_ns() >= deadline || stop_signals > 1)
            return;
        loop_wait(deadline, false);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Setup
 * ------------------------------------------------------------------------------------------ */

static char *topic_dup(enum bridge_topic_kind kind, const char *id)
{
    char buf[BRIDGE_TOPIC_MAX + 1];
    int n = bridge_topic_build(&sim.topics, kind, id, strlen(id), buf, sizeof buf);
    return n < 0 ? NULL : strdup(buf);
}

static const char *nonempty(const char *s)
{
    return s && *s ? s : NULL;
}

/* The client certificate and key of connection i, into cert and key (PATH_MAX each): the
 * device's own under --cert-dir, else --cert/--key, else broker.tls.*; "" when none. Returns 0
 * or -ENAMETOOLONG (already reported). */
static int conn_identity(unsigned i, char *cert, char *key)
{
    const char *c = sim.o.cert ? sim.o.cert : sim.cfg.tls_cert;
    const char *k = sim.o.key ? sim.o.key : sim.cfg.tls_key;
    int n1, n2;

    if (!sim.o.cert_dir) {
        n1 = snprintf(cert, PATH_MAX, "%s", c);
        n2 = snprintf(key, PATH_MAX, "%s", k);
    } else {
        /* per_device: connection i is device i */
        n1 = snprintf(cert, PATH_MAX, "%s/%s.pem", sim.o.cert_dir, sim.devs[i].id);
        n2 = snprintf(key, PATH_MAX, "%s/%s.key", sim.o.cert_dir, sim.devs[i].id);
    }
    if (n1 < 0 || n1 >= PATH_MAX || n2 < 0 || n2 >= PATH_MAX) {
        fprintf(stderr, "twinsim: the path of a client certificate or key is too long\n");
        return -ENAMETOOLONG;
    }
    return 0;
}

/* Creates the MQTT client of connection i (at start, and again after go_offline). */
static int conn_client_new(unsigned i)
{
    struct config *cfg = &sim.cfg;
    char err[BRIDGE_ERR_LEN];
    static char cert[PATH_MAX], key[PATH_MAX]; /* the bridge copies them */
    struct conn *c = &sim.conns[i];
    struct bridge_options bo;

    bridge_options_init(&bo);
    bo.url = cfg->broker_url;
    bo.client_id = c->client_id;
    bo.username = nonempty(cfg->username);
    bo.password = nonempty(cfg->password);
    bo.mqtt_version = cfg->mqtt_version;
    bo.clean_start = true; /* nothing to resume: desired is retained, commands re-sent */
    bo.keepalive_s = cfg->keepalive_s;
    bo.reconnect_min_s = cfg->reconnect_min_s;
    bo.reconnect_max_s = cfg->reconnect_max_s;
    bo.max_inflight = sim.o.max_inflight;
    bo.tls.ca = sim.o.ca ? sim.o.ca : nonempty(cfg->tls_ca);
    if (conn_identity(i, cert, key) < 0)
        return -ENAMETOOLONG;
    bo.tls.cert = nonempty(cert);
    bo.tls.key = nonempty(key);
    bo.tls.verify = cfg->tls_verify;
    if (sim.per_device) {
        bo.will_topic = sim.devs[i].status_topic;
        bo.will_payload = "offline";
        bo.will_len = 7;
        bo.will_retained = true;
        bo.will_qos = 1;
        bo.birth_topic = sim.devs[i].status_topic;
        bo.birth_payload = "online";
        bo.birth_len = 6;
        bo.birth_retained = true;
        bo.birth_qos = 1;
        bo.subscriptions = sim.devs[i].subs;
        bo.n_subscriptions = (int)sim.devs[i].n_subs;
        bo.sub_qos = 1;
    }
    bo.on_message = on_message;
    bo.on_connection = on_connection;
    bo.on_log = on_log;
    bo.ctx = c;
    int r = bridge_client_new(&c->client, &bo, err);
    if (r < 0) {
        log_error("cannot create the MQTT client", "client=%s error=\"%s\"", c->client_id, err);
        return r;
    }
    return 0;
}

static int conns_create(void)
{
    for (unsigned i = 0; i < sim.n_conns; i++) {
        struct conn *c = &sim.conns[i];

        c->index = i;
        c->slots = calloc(sim.o.max_inflight, sizeof *c->slots);
        if (!c->slots)
            return -ENOMEM;
        for (unsigned j = 0; j < sim.o.max_inflight; j++) {
            c->slots[j].conn = c;
            c->slots[j].next_free = c->free;
            c->free = &c->slots[j];
        }
        if (sim.per_device)
            snprintf(c->client_id, sizeof c->client_id, "twinsim-%s", sim.devs[i].id);
        else
            snprintf(c->client_id, sizeof c->client_id, "twinsim-%sc%03u", sim.o.id_prefix, i + 1);
        int r = conn_client_new(i);
        if (r < 0)
            return r;
    }
    return 0;
}

/* Starts every connection and waits for all of them (CONNECT_TIMEOUT_MS in total). */
static int conns_start(void)
{
    char err[BRIDGE_ERR_LEN];
    for (unsigned i = 0; i < sim.n_conns; i++) {
        int r = bridge_client_start(sim.conns[i].client, err);
        if (r < 0) {
            log_error("cannot start the MQTT client", "client=%s error=\"%s\"",
                      sim.conns[i].client_id, err);
            return r;
        }
    }
    int64_t deadline = mono_ns() + (int64_t)CONNECT_TIMEOUT_MS * NS_PER_MS;
    for (unsigned i = 0; i < sim.n_conns; i++) {
        while (bridge_client_wait_connected(sim.conns[i].client, 200) < 0) {
            if (stop_signals)
                return -EINTR;
            if (mono_ns() >= deadline) {
                char q[300];
                log_error("could not connect", "broker=%s client=%s timeout_ms=%u",
                          log_quote(q, sizeof q, sim.cfg.broker_url, strlen(sim.cfg.broker_url)),
                          sim.conns[i].client_id, CONNECT_TIMEOUT_MS);
                return -ETIMEDOUT;
            }
        }
    }
    return 0;
}

/* Keeps each window within the broker's Receive Maximum (Mosquitto's default is 20): more in
 * flight only parks publishes in Paho's queue, which its send thread rechecks about once a
 * second. QoS 0 is not counted by the broker, but status messages are QoS 1. Nothing is in
 * flight yet. */
static void windows_fit(void)
{
    unsigned clamped = 0, quota = 0;
    if (sim.o.qos == 0 && sim.per_device)
        return;
    for (unsigned i = 0; i < sim.n_conns; i++) {
        struct conn *c = &sim.conns[i];
        unsigned q = bridge_client_send_quota(c->client);
        if (q == 0 || q >= sim.o.max_inflight)
            continue;
        pthread_mutex_lock(&sim.mu);
        for (unsigned n = sim.o.max_inflight; n > q && c->free; n--)
            c->free = c->free->next_free; /* these slots are never used */
        pthread_mutex_unlock(&sim.mu);
        clamped++;
        quota = q;
    }
    if (clamped && !sim.o.quiet)
        log_info("window within the broker's receive maximum", "connections=%u max_inflight=%u",
                 clamped, quota);
}

static void conns_stop(void)
{
    for (unsigned i = 0; i < sim.n_conns; i++) {
        struct conn *c = &sim.conns[i];
        if (!c->client)
            continue;
        if (sim.per_device && bridge_client_connected(c->client)) {
            struct bridge_final fin = {.topic = sim.devs[i].status_topic,
                                       .payload = "offline",
                                       .len = 7,
                                       .retained = true,
                                       .qos = 1};
            bridge_client_stop(c->client, &fin, 1000);
        } else {
            bridge_client_stop(c->client, NULL, 1000);
        }
        bridge_client_free(c->client);
        c->client = NULL;
    }
}

/* How the connections identify themselves, for the "connected" line. */
static const char *identity_name(void)
{
    if (sim.o.cert_dir)
        return "per-device-certificate";
    if (sim.o.cert || sim.cfg.tls_cert[0])
        return "shared-certificate";
    return "no-certificate";
}

static int load_config(void)
{
    char err[CONFIG_ERR_LEN];
    config_defaults(&sim.cfg);
    if (sim.o.config_file && config_load_file(&sim.cfg, sim.o.config_file, err) < 0) {
        fprintf(stderr, "twinsim: %s\n", err);
        return -EINVAL;
    }
    if (config_load_env(&sim.cfg, NULL, err) < 0) {
        fprintf(stderr, "twinsim: %s\n", err);
        return -EINVAL;
    }
    if (sim.o.broker)
        snprintf(sim.cfg.broker_url, sizeof sim.cfg.broker_url, "%s", sim.o.broker);
    if (bridge_topics_init(&sim.topics, sim.cfg.devices_prefix, sim.cfg.twins_prefix,
                           sim.cfg.hub_prefix, err) < 0) {
        fprintf(stderr, "twinsim: topics: %s\n", err);
        return -EINVAL;
    }
    return 0;
}

static int devs_create(void)
{
    uint64_t seed = sim.o.seed;
    if (!sim.o.seed_set)
        seed = (uint64_t)hub_now_ms() ^ ((uint64_t)getpid() << 32);
    int nurse_digits = snprintf(NULL, 0, "%u", sim.n_nurses);
    if (nurse_digits < 2)
        nurse_digits = 2;
    for (unsigned i = 0; i < sim.n_devs; i++) {
        struct dev *d = &sim.devs[i];
        int n;
        if (i >= sim.n_mon) {
            /* a nurse: nurse-01, .., at her station, free */
            unsigned j = i - sim.n_mon;
            double x, y;
            n = snprintf(d->id, sizeof d->id, "nurse-%0*u", nurse_digits, j + 1);
            d->nurse = &sim.nurses[j];
            d->nurse->index = j;
            ward_station_pos(j, &x, &y);
            ward_nurse_init(&d->nurse->w, x, y, sim.o.nurse_speed, sim.o.service, mono_ns());
        } else {
            n = snprintf(d->id, sizeof d->id, "%s%04u", sim.o.id_prefix, i + 1);
        }
        d->pos_sent = UINT_MAX; /* no connection has had it yet */
        if (n < 0 || (size_t)n >= sizeof d->id || !bridge_id_valid(d->id, (size_t)n)) {
            fprintf(stderr,
                    "twinsim: --id-prefix: '%s%04u' is not a valid device id (1..128 bytes of "
                    "[A-Za-z0-9._:-], not starting with '.')\n",
                    sim.o.id_prefix, i + 1);
            return -EINVAL;
        }
        d->topic = topic_dup(BRIDGE_T_TELEMETRY, d->id);
        d->status_topic = topic_dup(BRIDGE_T_STATUS, d->id);
        if (sim.per_device) {
            d->desired_topic = topic_dup(BRIDGE_T_DESIRED, d->id);
            d->commands_topic = topic_dup(BRIDGE_T_COMMANDS, d->id);
            d->ack_topic = topic_dup(BRIDGE_T_CMD_ACK, d->id);
            if (!d->desired_topic || !d->commands_topic || !d->ack_topic) {
                fprintf(stderr, "twinsim: cannot build the topics of '%s'\n", d->id);
                return -EINVAL;
            }
            d->subs[0] = d->desired_topic;
            d->subs[1] = d->commands_topic;
            d->n_subs = 2;
            if (d->nurse) { /* commands only */
                d->subs[0] = d->commands_topic;
                d->n_subs = 1;
            }
        }
        if (!d->topic || !d->status_topic) {
            fprintf(stderr, "twinsim: cannot build the topics of '%s'\n", d->id);
            return -EINVAL;
        }
        d->conn = &sim.conns[i % sim.n_conns];
        dev_model_init(d, seed, i);
        if (rec.x && i < sim.o.ecg_record_devs) {
            /* spread over the recording: device i starts i / N of the way into it */
            d->rp = calloc(1, sizeof *d->rp);
            if (!d->rp)
                return -ENOMEM;
            d->rp->pos = (double)rec.n * i / sim.o.ecg_record_devs;
        }
    }
    return 0;
}

static void devs_free(void)
{
    if (!sim.devs)
        return;
    for (unsigned i = 0; i < sim.n_devs; i++) {
        free(sim.devs[i].topic);
        free(sim.devs[i].status_topic);
        free(sim.devs[i].desired_topic);
        free(sim.devs[i].commands_topic);
        free(sim.devs[i].ack_topic);
        free(sim.devs[i].rp);
    }
    while (sim.inbox) {
        struct inmsg *next = sim.inbox->next;
        free(sim.inbox);
        sim.inbox = next;
    }
    free(sim.devs);
    free(sim.nurses);
    if (sim.conns)
        for (unsigned i = 0; i < sim.n_conns; i++)
            free(sim.conns[i].slots);
    free(sim.conns);
    free(sim.heap);
    free(sim.ring);
}

int main(int argc, char **argv)
{
    int rc = opts_parse(&sim.o, argc, argv);
    if (rc == 1)
        return 0;
    if (rc)
        return 2;
    log_set_level(LOG_INFO);
    if (load_config() < 0)
        return 2;

    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&sim.cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&sim.mu, NULL);
    atomic_init(&sim.ready_pending, false);

    sim.n_mon = sim.o.devices;
    sim.per_device = sim.o.connections == sim.o.devices;
    sim.n_nurses = sim.per_device ? sim.o.nurses : 0; /* opts_parse said so otherwise */
    sim.n_devs = sim.n_mon + sim.n_nurses;
    sim.n_conns = sim.per_device ? sim.n_devs : sim.o.connections;
    sim.nurse_period_ns = (int64_t)llround(sim.o.nurse_period * (double)NS_PER_S);
    if (sim.o.rate > 0)
        sim.period_ns = (int64_t)llround(1e9 / sim.o.rate);
    if (!sim.o.ecg_set) /* every sample of the strip, in chunks of one message period */
        sim.o.ecg_samples = sim.o.rate > 0 ? (unsigned)fmin(1000, /* the hub's max_keys */
                                                            fmax(1, round(ECG_HZ / sim.o.rate)))
                                           : 25;
    if (sim.period_ns < 1 && sim.o.rate > 0)
        sim.period_ns = 1;
    ecg_table_init(sim.ecg_table);
    if (sim.o.ecg_record) {
        if (rec_load(sim.o.ecg_record) < 0)
            return 2;
        if (!sim.o.ecg_record_devs || sim.o.ecg_record_devs > sim.o.devices)
            sim.o.ecg_record_devs = sim.o.devices;
    }
    msgpack_sbuffer_init(&sim.sbuf);
    msgpack_packer_init(&sim.pk, &sim.sbuf, msgpack_sbuffer_write);
    msgpack_sbuffer_init(&sim.abuf);
    msgpack_packer_init(&sim.apk, &sim.abuf, msgpack_sbuffer_write);
    atomic_init(&sim.inbox_pending, false);
    sim.flaky_rng = (uint64_t)hub_now_ms() * 0x9e3779b97f4a7c15ULL | 1;
    sim.boot = hub_now_ms(); /* a restarted twinsim is a rebooted fleet: seq starts over */

    sim.devs = calloc(sim.n_devs, sizeof *sim.devs);
    sim.conns = calloc(sim.n_conns, sizeof *sim.conns);
    sim.heap = calloc(sim.n_devs, sizeof *sim.heap);
    sim.ring = calloc(sim.n_conns, sizeof *sim.ring);
    sim.nurses = calloc(sim.n_nurses ? sim.n_nurses : 1, sizeof *sim.nurses);
    if (!sim.devs || !sim.conns || !sim.heap || !sim.ring || !sim.nurses) {
        fprintf(stderr, "twinsim: out of memory\n");
        devs_free();
        return 1;
    }
    if (devs_create() < 0) {
        devs_free();
        return 2;
    }

    int64_t start = mono_ns(), send_end = start;
    bool started = false;
    if (conns_create() == 0 && conns_start() == 0) {
        started = true;
        if (!sim.o.quiet) {
            char q[300];
            log_info("connected", "broker=%s connections=%u devices=%u nurses=%u identity=%s",
                     log_quote(q, sizeof q, sim.cfg.broker_url, strlen(sim.cfg.broker_url)),
                     sim.n_conns, sim.n_mon, sim.n_nurses, identity_name());
        }
        windows_fit();
        if (!sim.per_device) {
            unsigned missed = publish_status_all("online", mono_ns() + DRAIN_TIMEOUT_NS);
            if (missed && !sim.o.quiet)
                log_warn("status online not published", "devices=%u", missed);
        }
        start = mono_ns();
        run(start);
        send_end = mono_ns();
        /* a message refused and still owed at the end never went out: count it */
        for (unsigned i = 0; i < sim.n_devs; i++)
            if (sim.devs[i].refused && !sim.devs[i].done)
                sim.dropped++;
        int64_t deadline = mono_ns() + DRAIN_TIMEOUT_NS;
        if (!sim.per_device) {
            unsigned missed = publish_status_all("offline", deadline);
            if (missed && !sim.o.quiet)
                log_warn("status offline not published", "devices=%u", missed);
        }
        drain(deadline);
    }
    conns_stop();

    pthread_mutex_lock(&sim.mu);
    uint64_t acked = sim.acked, failed = sim.failed + sim.dropped;
    pthread_mutex_unlock(&sim.mu);
    double secs = (double)(send_end - start) / 1e9;
    printf("twinsim: devices=%u sent=%" PRIu64 " acked=%" PRIu64 " failed=%" PRIu64
           " seconds=%.3f rate=%.1f msg/s",
           sim.n_mon, sim.sent, acked, failed, secs, secs > 0 ? (double)sim.sent / secs : 0.0);
    if (sim.n_nurses)
        printf(" nurses=%u", sim.n_nurses);
    printf("\n");
    if (sim.o.print_last)
        for (unsigned i = 0; i < sim.n_devs; i++)
            printf("%s %" PRIu64 "\n", sim.devs[i].id, sim.devs[i].last_acked);
    fflush(stdout);

    msgpack_sbuffer_destroy(&sim.sbuf);
    msgpack_sbuffer_destroy(&sim.abuf);
    devs_free();
    pthread_cond_destroy(&sim.cond);
    pthread_mutex_destroy(&sim.mu);
    return !started || failed > 0 ? 1 : 0;
}
