"""The ``movierec`` command: ``up | api | worker | flower | demo | submit | evaluate | status | recommend |
recommend-batch | search | similar | rate | ratings | delete | synth``.

Settings are read here, once, from the environment and passed down. Heavy imports (gunicorn, Celery's
worker, the stack) happen inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from cli.datadir import DataDirBusy
from shared.infra.settings import DEFAULT_API_PORT, Settings

if TYPE_CHECKING:
    from cli.client import Client

DEFAULT_FLOWER_PORT = 5555
"""Flower's own default port, of ``movierec flower`` and ``movierec up --flower``."""


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        raise SystemExit(f"movierec: invalid configuration: {problems}") from None


def _settings_with_redis(*, process: str) -> Settings:
    """The settings of a long-running process, once its Redis is known to be reachable as ``REDIS_URL`` says:
    a malformed URL, or a TLS connection that cannot be made (no TLS at that port, a certificate that fails
    verification), ends the process at once with the reason, host included, instead of retrying for minutes.
    A Redis that is merely not up yet is waited for, as before."""
    from shared.infra.redisconn import TLSError, preflight

    settings = _settings()
    try:
        preflight(settings.redis_url)
    except (TLSError, ValueError) as exc:
        raise SystemExit(f"movierec {process}: {exc}") from None
    return settings


def _cmd_up(args: argparse.Namespace) -> int:
    from cli.stack import Stack, masked_url

    embedded = "REDIS_URL" not in os.environ
    stack = Stack(
        _settings(),
        data_dir=Path(args.data_dir),
        port=args.port,
        cpu_workers=args.cpu_workers,
        interactive_workers=args.interactive_workers,
        embedded_redis=embedded,
        log_dir=Path(args.log_dir) if args.log_dir else None,
        flower=args.flower,
        flower_port=args.flower_port,
    )
    stack.start()
    where = f"embedded Redis at {masked_url(stack.settings.redis_url)}" if embedded else "Redis from REDIS_URL"
    print(f"movierec: API at {stack.api_url} ({where}); Ctrl-C stops everything", flush=True)
    if stack.flower_url is not None:
        login = "FLOWER_BASIC_AUTH login" if os.environ.get("FLOWER_BASIC_AUTH") else "open: FLOWER_BASIC_AUTH unset"
        print(f"movierec: Flower at {stack.flower_url} ({login})", flush=True)
    return stack.run_until_signalled()


def _cmd_api(args: argparse.Namespace) -> int:
    # gevent's patches go in before the app is imported (api/server.py says why).
    from gevent import monkey

    monkey.patch_all()

    from api.server import serve
    from cli.stack import is_loopback

    settings = _settings_with_redis(process="api")
    if not settings.api_keys and not is_loopback(args.host) and not args.insecure:
        print(f"movierec: refusing to serve the API on {args.host}, beyond this machine, without API keys: "
              "set MOVIEREC_API_KEYS, bind a loopback address, or pass --insecure to serve it open",
              file=sys.stderr)  # fmt: skip
        return 2
    serve(settings, host=args.host, port=args.port, workers=args.workers, connections=args.connections)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from shared.jobs.kinds import QUEUES
    from workers.main import run_worker

    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    unknown = set(queues) - set(QUEUES)
    if not queues or unknown:
        raise SystemExit(f"movierec worker: --queues takes {', '.join(QUEUES)} or several, comma-separated "
                         f"(got {args.queues!r})")  # fmt: skip
    return run_worker(
        _settings_with_redis(process="worker"),
        queues=queues,
        concurrency=args.concurrency,
        loglevel=args.loglevel,
        device_slot=args.device_slot,
        nice=args.nice,
    )


FLOWER_HELP = """Flower, Celery's web monitor, on our Celery app: the broker URL (Redis password included) is
read from REDIS_URL and never put on a command line, and the queues, events and control messages carry our key
prefix (MOVIEREC_KEY_PREFIX). Set FLOWER_BASIC_AUTH=user:password (comma-separate several) to require a login;
without it anyone who reaches the port may watch and control the workers (shut them down, revoke tasks), so it
listens on loopback unless --address says otherwise. Other FLOWER_* variables are Flower's own options.

Works with our setup: Workers (by name, live from their heartbeat events), Tasks (received, started,
succeeded or failed, runtime, worker), Broker (the waiting messages of the cpu and gpu queues, every priority
step counted, under our prefix), /api/*, /healthcheck. Workers send events only once Flower asks (every 5 s
while it runs; they keep sending until they restart): always on, they would slow the serving path.

Limits: a task's arguments show only its job id and its result only {'job': ..., 'status': ...} (a job's
parameters and result live in the job store: ask the API); Flower keeps what it saw since it started, in
memory; the GPU worker runs one task at a time (solo pool) and answers no inspect request while it works, so
Flower shows it without details then; revoking or terminating a task here leaves its job record as it was
(cancel a job through the API instead); the API sends no task-sent events, so a task shows from when a
worker receives it; /metrics (Prometheus) needs no login, as in Flower."""


def _cmd_flower(args: argparse.Namespace) -> int:
    from shared.infra.redisconn import RedisTarget
    from shared.jobs.celery_app import make_celery

    # Celery's command line would take these from the environment over our app and its broker URL; and
    # Flower's /metrics is its own process's registry, not samples written into the API's multiprocess directory.
    for name in ("APP", "BROKER_URL", "CELERY_BROKER_URL", "CONFIG_MODULE", "CELERY_CONFIG_MODULE"):
        os.environ.pop(name, None)
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = _settings_with_redis(process="flower")
    app = make_celery(settings)
    # Flower's Broker view reads the queue lengths itself and knows a broker by its URL's scheme, which our
    # transport's name would replace; Flower sends no job, so kombu's own Redis transport (same keys) serves it:
    # redis, rediss (with broker_use_ssl: verified TLS) or sentinel, given every sentinel as kombu's own list.
    broker = RedisTarget.parse(settings.redis_url).kombu()
    app.conf.broker_transport = broker.scheme
    app.conf.broker_url = broker.alternates
    code = app.start(argv=["flower", f"--address={args.address}", f"--port={args.port}"])
    return int(code or 0)


def _cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo

    return run_demo(
        _settings(),
        data=Path(args.data) if args.data else None,
        data_dir=Path(args.data_dir),
        embedded_redis="REDIS_URL" not in os.environ,
        cpu_workers=args.cpu_workers,
        interactive_workers=args.interactive_workers,
        serve=args.serve,
        port=args.port,
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cli.client import API_KEY_ENV
    from cli.evaluate import run_evaluate

    def names(value: str | None) -> list[str] | None:
        return None if value is None else [n.strip() for n in value.split(",") if n.strip()]

    body = {
        "dataset": args.dataset,
        "split": args.split,
        "new_user_share": args.new_user_share,
        "tune": False if args.no_tune else None,
        "min_ratings": args.min_ratings,
        "train_fraction": args.train_fraction,
        "relevant_at": args.relevant_at,
        "k": args.k,
        "recipes": names(args.recipes),
        "baselines": names(args.baselines),
        "seed": args.seed,
        "shard_users": args.shard_users,
        "max_evaluated": args.max_evaluated,
    }
    return run_evaluate(
        _settings(),
        body={key: value for key, value in body.items() if value is not None},
        data=Path(args.data) if args.data else None,
        api=args.api,
        api_key=os.environ.get(API_KEY_ENV),
        data_dir=Path(args.data_dir),
        embedded_redis="REDIS_URL" not in os.environ,
        cpu_workers=args.cpu_workers,
        interactive_workers=args.interactive_workers,
        as_json=args.json,
    )


def _client(args: argparse.Namespace) -> Client:
    """A client of ``--api``, sending the key in ``MOVIEREC_API_KEY`` when there is one."""
    from cli.client import API_KEY_ENV, Client

    return Client(args.api, api_key=os.environ.get(API_KEY_ENV))


def _api_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A client command whose API error (``ApiError``: the status, code and message the API answered) is printed
    and exits 1, in one place instead of each command."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from cli.client import ApiError

        try:
            return command(args)
        except ApiError as exc:
            print(f"movierec: {exc}", file=sys.stderr)
            return 1

    return run


@_api_errors
def _cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    if (args.path is None) == (args.upload is None):
        print("movierec: give a path in the API's data root, or --upload DIR_OR_ZIP", file=sys.stderr)
        return 2
    if args.upload is not None:
        fix = Path(args.genres_fix_csv) if args.genres_fix_csv else None
        job = client.upload_dataset(Path(args.upload), tags_per_movie=args.tags_per_movie, genres_fix_csv=fix)
    else:
        job = client.submit_dataset(args.path, tags_per_movie=args.tags_per_movie, genres_fix_csv=args.genres_fix_csv)
    print(f"job {job['id']} {job['status']}", flush=True)
    if not args.wait:
        return 0
    return _report(client, client.wait(job["id"]))


@_api_errors
def _cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    job = client.wait(args.job) if args.wait else client.job(args.job)
    return _report(client, job)


@_api_errors
def _cmd_recommend(args: argparse.Namespace) -> int:
    from cli.demo import print_recommendations

    body: dict[str, Any] = {"k": args.k}
    if args.user is not None:
        body["user_id"], title = args.user, f"user {args.user}"
        body["exclude_seen"] = not args.include_seen
    elif args.keywords:
        body["keywords"] = [k.strip() for k in args.keywords.split(",") if k.strip()]
        title = f"keywords {body['keywords']}"
    else:
        body["liked"], body["disliked"] = args.liked or [], args.disliked or []
        title = f"liked {args.liked or []}, disliked {args.disliked or []}"
    if args.genres:
        body["genres"] = [g.strip() for g in args.genres.split(",") if g.strip()]
    rules = {"year_min": args.year_min, "year_max": args.year_max, "exclude": args.exclude,
             "diversity": args.diversity, "cursor": args.cursor}  # fmt: skip
    body.update({name: value for name, value in rules.items() if value is not None})
    print_recommendations(title, _client(args).recommend(**body))
    return 0


@_api_errors
def _cmd_recommend_batch(args: argparse.Namespace) -> int:
    out = Path(args.out)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("csv", "npy"):
        print("movierec: --out must end in .csv or .npy", file=sys.stderr)
        return 2
    try:
        users: str | list[int] = "all" if args.users == "all" else [int(u) for u in args.users.split(",") if u.strip()]
    except ValueError:
        print("movierec: --users is 'all' or comma-separated user ids, e.g. 1,2,3", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"users": users, "k": args.k, "exclude_seen": not args.include_seen}
    if args.shard_users is not None:
        body["shard_users"] = args.shard_users
    client = _client(args)
    job = client.submit_batch(**body)
    print(f"job {job['id']} {job['status']}", file=sys.stderr, flush=True)
    final = client.wait(job["id"], progress=not args.quiet)
    if final["status"] != "succeeded":
        print(f"movierec: job {job['id']} {final['status']}: {(final.get('error') or {}).get('message')}",
              file=sys.stderr)  # fmt: skip
        return 1
    written = client.download(job["id"], out, fmt=fmt)
    result = client.result(job["id"])
    print(f"{out}: {result['rows']:,} rows for {result['users']:,} users ({result['popular']:,} popular), "
          f"{written:,} bytes; {result['users_per_second']} users/s, model {result['model']}")  # fmt: skip
    return 0


def _cmd_rate(args: argparse.Namespace) -> int:
    from cli.client import ApiError

    ratings: list[dict[str, Any]] = []
    try:
        if args.pairs:
            user, pairs = int(args.pairs[0]), args.pairs[1:]
            if not pairs or "=" in args.pairs[0]:
                raise ValueError("give the user id first, then MOVIE=RATING pairs")
            for pair in pairs:
                movie, _, value = pair.partition("=")
                ratings.append({"user_id": user, "movie_id": int(movie), "rating": float(value)})
        if args.csv:
            import csv

            with open(args.csv, newline="") as f:
                for row in csv.DictReader(f):
                    rating = {"user_id": int(row["userId"]), "movie_id": int(row["movieId"]),
                              "rating": float(row["rating"])}  # fmt: skip
                    if row.get("timestamp"):
                        rating["timestamp"] = int(row["timestamp"])
                    ratings.append(rating)
    except (ValueError, KeyError, OSError) as exc:
        raise SystemExit(f"movierec rate: USER MOVIE=RATING... or a CSV of userId,movieId,rating[,timestamp] "
                         f"is expected ({exc})") from None  # fmt: skip
    if not ratings:
        raise SystemExit("movierec rate: give USER MOVIE=RATING... or --csv FILE")
    client, stored = _client(args), 0
    try:
        for lo in range(0, len(ratings), RATINGS_PER_REQUEST):
            stored += client.post_ratings(args.dataset, ratings[lo : lo + RATINGS_PER_REQUEST])["stored"]
    except ApiError as exc:
        print(f"movierec: {exc} ({stored:,} of {len(ratings):,} stored before)", file=sys.stderr)
        return 1
    print(f"stored {stored:,} ratings in {args.dataset}")
    return 0


EVENTS_PER_REQUEST = 1000
"""The API's batch limit (api/schemas.py MAX_EVENTS)."""


def _cmd_events(args: argparse.Namespace) -> int:
    """Post a JSON-lines file of events in batches, each with an Idempotency-Key made of the file's digest and the
    batch's place: a run stopped by an error can be run again whole, and what was stored is not stored twice."""
    import hashlib
    import json

    from cli.client import ApiError

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
        events = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise SystemExit(f"movierec events: a file of one JSON event a line is expected ({exc})") from None
    if not events:
        raise SystemExit("movierec events: the file holds no event")
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    client, stored, credited, replayed = _client(args), 0, 0, 0
    for n, lo in enumerate(range(0, len(events), args.batch)):
        try:
            answer = client.post_events(events[lo : lo + args.batch], idempotency_key=f"movierec-{digest}-{n}")
        except ApiError as exc:
            print(f"movierec: batch {n + 1} (events {lo + 1}-{min(lo + args.batch, len(events))}): {exc}; "
                  f"{stored:,} of {len(events):,} stored before it. Run the same command again once fixed: what "
                  "was stored is not stored twice", file=sys.stderr)  # fmt: skip
            return 1
        stored += answer["accepted"]
        credited += answer["credited"]
        replayed += answer["accepted"] if answer.get("replayed") else 0
    again = f" ({replayed:,} of them by an earlier run, not stored again)" if replayed else ""
    print(f"stored {stored:,} events{again}; {credited:,} credited to an experiment")
    return 0


def _experiment_lines(report: dict[str, Any]) -> list[str]:
    """An experiment's report as the lines ``movierec experiment show`` prints."""
    head = f"{report['name']}: {report['kind']}, {report['state']}, k {report['k']}"
    lines = [head]
    if report["kind"] == "interleave":
        x = report["interleaving"]
        a, b = (v["name"] for v in report["variants"])
        lines.append(f"  users preferring {a} {x['wins_a']}, {b} {x['wins_b']}, ties {x['ties']}; preference "
                     f"{x['preference']:+.3f}; sign test p {x['p_value']:.3g}, "
                     f"always valid p {x['always_valid_p']:.3g}")  # fmt: skip
        ahead = x.get("preferred")
    else:
        for v in report["variants"]:
            versus = v.get("vs_control", {}).get("ctr")
            diff = (f"; vs {v['vs_control']['variant']} {versus['difference']:+.4f} [{versus['low']:+.4f}, "
                    f"{versus['high']:+.4f}] p {versus['p_value']:.3g}, always valid p {versus['always_valid_p']:.3g}"
                    if versus else "")  # fmt: skip
            lines.append(f"  {v['name']:<10} {v['model']}  share {v['share']:.2f}  users {v['users']:,}  impressions "
                         f"{v['impressions']:,}  clicks {v['clicks']:,}  CTR@{report['k']} {v['ctr']['value']:.4f}"
                         f"{diff}")  # fmt: skip
        ahead = report.get("leader")
    if ahead:
        verdict = ("won (always valid: promote picks it)" if ahead["always_valid_significant"]
                   else "leads, significant at a fixed sample only" if ahead["significant"]
                   else "leads, a tie so far")  # fmt: skip
        lines.append(f"  {ahead['variant']} ({ahead['model']}) {verdict}")
    return lines


@_api_errors
def _cmd_experiment(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "list":
        for e in client.experiments():
            described = ", ".join(f"{v['name']}={v['model']}" for v in e["variants"])
            print(f"{e['name']:<20} {e['kind']:<10} {e['state']:<8} {described}")
        return 0
    if not args.name:
        print(f"movierec: experiment {args.action} needs a NAME", file=sys.stderr)
        return 2
    if args.action == "start":
        if len(args.models) < 2:
            print("movierec: experiment start NAME needs two or more models", file=sys.stderr)
            return 2
        shares = [float(x) for x in args.shares.split(",")] if args.shares else [1.0] * len(args.models)
        if len(shares) != len(args.models):
            print("movierec: --shares needs one share a model", file=sys.stderr)
            return 2
        variants = [{"model": m, "share": x} for m, x in zip(args.models, shares, strict=True)]
        body: dict[str, Any] = {"name": args.name, "kind": args.kind, "k": args.k, "variants": variants}
        if args.seed is not None:
            body["seed"] = args.seed
        client.start_experiment(**body)
    elif args.action != "show":
        client.experiment(args.name, args.action, variant=args.variant if args.action == "promote" else None)
    print("\n".join(_experiment_lines(client.experiment(args.name))))
    return 0


RATINGS_PER_REQUEST = 10_000
"""The API's batch limit (shared.store.feedback.MAX_BATCH)."""


@_api_errors
def _cmd_ratings(args: argparse.Namespace) -> int:
    listed = _client(args).user_ratings(args.user_id, dataset=args.dataset)
    print(f"user {listed['user_id']} in {listed['dataset']}: {len(listed['ratings'])} ratings")
    for r in listed["ratings"]:
        print(f"  {r['rating']:>4}  {r['movie_id']:>8}  {r['title']}  ({r['source']})")
    return 0


@_api_errors
def _cmd_delete(args: argparse.Namespace) -> int:
    deleted = _client(args).delete(f"{args.what}s", args.name)
    models = f" and models {', '.join(deleted['models'])}" if deleted.get("models") else ""
    print(f"deleted {deleted['deleted']}{models}: {deleted['keys']:,} keys, {deleted['bytes'] / 2**20:.2f} MiB freed")
    return 0


@_api_errors
def _cmd_search(args: argparse.Namespace) -> int:
    found = _client(args).search(args.query, limit=args.limit)
    for movie in found["movies"]:
        print(f"{movie['movie_id']:>8}  {movie['title']}  [{', '.join(movie['descriptors'][:6])}]")
    if not found["movies"]:
        print(f"movierec: no title matches {args.query!r}", file=sys.stderr)
    return 0


@_api_errors
def _cmd_similar(args: argparse.Namespace) -> int:
    answer = _client(args).similar(args.movie_id, k=args.k)
    for item in answer["items"]:
        shared = ", ".join(item.get("shared_descriptors", []))
        print(f"{item['score']:.3f}  {item['movie_id']:>8}  {item['title']}  [shares: {shared}]")
    return 0


def _report(client: object, job: dict[str, object]) -> int:
    from cli.client import Client

    assert isinstance(client, Client)
    print(json.dumps(job, indent=2))
    if job["status"] == "succeeded" and job["kind"] == "ingest":
        from cli.demo import print_dataset

        print_dataset(client.result(str(job["id"])))
    return 0 if job["status"] in ("succeeded", "queued", "running") else 1


def _cmd_synth(args: argparse.Namespace) -> int:
    from cli.synth import SynthSpec, write_synthetic

    spec = SynthSpec(movies=args.movies, users=args.users, ratings=args.ratings, genome=args.genome, seed=args.seed,
                     taste=args.taste)  # fmt: skip
    try:
        counts = write_synthetic(Path(args.out), spec)
    except ValueError as exc:
        raise SystemExit(f"movierec synth: {exc}") from None
    print(json.dumps({"out": args.out, **counts}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="movierec",
        description="Learned movie embeddings and recommendations from MovieLens, computed by Celery workers.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_service_commands(sub)
    _add_client_commands(sub)
    _add_recommend_command(sub)
    _add_batch_command(sub)
    _add_movie_commands(sub)
    _add_feedback_commands(sub)
    _add_data_commands(sub)
    return parser


def _add_service_commands(sub: Any) -> None:
    cpus = os.cpu_count() or 1
    p = sub.add_parser(
        "up",
        help="run Redis (embedded unless REDIS_URL is set), the API and the workers",
        description="Run Redis (embedded unless REDIS_URL is set), the API and the workers, and supervise them: "
        "a process that exits is started again (more than 5 exits a minute stop everything, exit 1). "
        "Ctrl-C or SIGTERM stops every process, Redis last.",
    )
    p.add_argument("--port", type=int, default=DEFAULT_API_PORT, help="API port (default %(default)s)")
    p.add_argument("--cpu-workers", type=int, default=cpus, help="CPU worker processes (default %(default)s)")
    p.add_argument("--interactive-workers", type=int, default=1,
                   help="interactive worker processes: answers a person waits for (default %(default)s)")  # fmt: skip
    p.add_argument("--data-dir", default=".movierec", help="embedded Redis data (default %(default)s)")
    p.add_argument("--log-dir", default=None, help="write each process's log here instead of the terminal")
    p.add_argument("--flower", action="store_true", help="also run Flower, the Celery monitor, on loopback")
    p.add_argument("--flower-port", type=int, default=DEFAULT_FLOWER_PORT, help="Flower's port (default %(default)s)")
    p.set_defaults(func=_cmd_up)

    p = sub.add_parser("api", help="serve the HTTP API with gunicorn")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    p.add_argument("--insecure", action="store_true",
                   help="serve on a non-loopback --host without MOVIEREC_API_KEYS (refused otherwise)")  # fmt: skip
    p.add_argument("--port", type=int, default=DEFAULT_API_PORT)
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--connections", type=int, default=1000,
                   help="connections each gunicorn worker holds at once (default %(default)s)")  # fmt: skip
    p.set_defaults(func=_cmd_api)

    p = sub.add_parser("worker", help="run a Celery worker for the interactive, cpu or gpu queue")
    p.add_argument("--queues", required=True, help="interactive, cpu or gpu, or several comma-separated")
    p.add_argument("--concurrency", type=int, default=None,
                   help="prefork processes (interactive, cpu; default: cores)")  # fmt: skip
    p.add_argument("--nice", type=int, default=None,
                   help="CPU niceness to add (default: 10 for batch queues, 0 with the interactive one)")  # fmt: skip
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--device-slot", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser(
        "flower",
        help="run Flower (Celery's web monitor) on our Celery app; FLOWER_BASIC_AUTH=user:password to log in",
        description=FLOWER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--address", default="127.0.0.1", help="listen address (default %(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_FLOWER_PORT, help="port (default %(default)s)")
    p.set_defaults(func=_cmd_flower)

    p = sub.add_parser("demo", help="start the embedded stack, ingest a MovieLens directory, print figures")
    p.add_argument("--data", default=None, help="MovieLens directory (else MOVIEREC_DEMO_DATA, a download, a sample)")
    p.add_argument("--data-dir", default=".movierec/demo", help="Redis data, logs, cache (default %(default)s)")
    p.add_argument("--cpu-workers", type=int, default=cpus)
    p.add_argument("--interactive-workers", type=int, default=1)
    p.add_argument("--serve", action="store_true",
                   help="keep the stack up afterwards, with the dashboard at /ui/, until Ctrl-C")  # fmt: skip
    p.add_argument("--port", type=int, default=None, help="API and dashboard port (default: a free one)")
    p.set_defaults(func=_cmd_demo)


def _add_client_commands(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a job to a running API")
    what = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    d = what.add_parser(
        "dataset",
        help="ingest a MovieLens directory: a path inside the API's data root, or --upload the files",
        description="Ingest a MovieLens directory: PATH inside the API's data root, or --upload a local directory "
        "or MovieLens .zip, whose files are streamed to the API (up to its MOVIEREC_MAX_UPLOAD_BYTES), so no "
        "disk is shared with the API or the workers.",
    )
    d.add_argument("path", nargs="?", default=None, help="a directory inside the API's data root")
    d.add_argument("--upload", default=None, metavar="DIR_OR_ZIP", help="a local MovieLens directory or .zip to send")
    d.add_argument("--tags-per-movie", type=int, default=None)
    d.add_argument(
        "--genres-fix-csv", default=None, help="movieId,genres CSV filling '(no genres listed)' (with --upload: local)"
    )
    d.add_argument("--wait", action="store_true", help="wait with a progress bar and print the result")
    d.add_argument("--api", default=os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000"))
    d.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "evaluate",
        help="evaluate recipes against tuned baselines under a split by time; print the table",
        description="Split the ratings by time (per user, or at one global time), tune every recipe and baseline "
        "(random, most-popular, item-kNN, EASE, RP3beta, iALS) on a validation split of the training part, refit "
        "the chosen settings on the training part, score them once on the test part and on held-out new users: "
        "Recall, NDCG, HR, coverage and cold-start recall at k, with paired bootstrap intervals against the best "
        "baseline. Without --api, runs the embedded stack on --data (as movierec demo does).",
    )
    p.add_argument("--data", default=None, help="a MovieLens directory (with --api: a path in the API's data root)")
    p.add_argument("--dataset", default=None, help="with --api: an ingested dataset id instead of --data")
    p.add_argument("--recipes", default=None, help="comma-separated; '' for none (default: every recipe)")
    p.add_argument("--baselines", default=None, help="comma-separated; '' for none (default: all six)")
    p.add_argument("--split", choices=("temporal", "global"), default=None, help="default temporal (per user)")
    p.add_argument("--new-user-share", type=float, default=None, help="users held out as new users (default 0.15)")
    p.add_argument("--no-tune", action="store_true", help="every row at its default setting, no validation")
    p.add_argument("--min-ratings", type=int, default=None, help="default 10")
    p.add_argument("--train-fraction", type=float, default=None, help="default 0.8")
    p.add_argument("--relevant-at", type=float, default=None, help="default 4.0")
    p.add_argument("--k", type=int, default=None, help="default 10")
    p.add_argument("--seed", type=int, default=None, help="default 42")
    p.add_argument("--shard-users", type=int, default=None, help="evaluated users per scoring shard (default 200)")
    p.add_argument(
        "--max-evaluated", type=int, default=None, help="at most this many test users and per new-user slice (a sample)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    p.add_argument("--api", default=None, help="a running API (else the embedded stack is started)")
    p.add_argument("--data-dir", default=".movierec/evaluate", help="embedded stack's data (default %(default)s)")
    p.add_argument("--cpu-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--interactive-workers", type=int, default=1)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("status", help="show a job (and wait for it with --wait)")
    p.add_argument("job")
    p.add_argument("--wait", action="store_true")
    p.add_argument("--api", default=os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000"))
    p.set_defaults(func=_cmd_status)


def _add_recommend_command(sub: Any) -> None:
    p = sub.add_parser("recommend", help="ask the active model for movies (a user, keywords, or liked/disliked)")
    query = p.add_mutually_exclusive_group(required=True)
    query.add_argument("--user", type=int, help="a user id of the model's dataset")
    query.add_argument("--keywords", help="comma-separated, e.g. 'war,violence,drama'")
    query.add_argument("--liked", type=int, nargs="+", help="movie ids to find more of")
    p.add_argument("--disliked", type=int, nargs="+", help="movie ids to move away from (with --liked)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--genres", help="comma-separated genres to keep")
    p.add_argument("--year-min", type=int, help="only movies of this year or later (the title's year)")
    p.add_argument("--year-max", type=int, help="only movies of this year or earlier")
    p.add_argument("--exclude", type=int, nargs="+", help="movie ids the answer must not hold")
    p.add_argument("--diversity", type=float, help="0 to 1: choose by maximal marginal relevance")
    p.add_argument("--cursor", help="the next page of the same query (the cursor the previous page printed)")
    p.add_argument("--include-seen", action="store_true", help="with --user: do not exclude rated movies")
    p.add_argument("--api", default=os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000"))
    p.set_defaults(func=_cmd_recommend)


def _add_batch_command(sub: Any) -> None:
    p = sub.add_parser(
        "recommend-batch",
        help="recommendations for many users as a job; the rows saved as CSV or .npy",
        description="Submit POST /v1/jobs/recommend-batch, wait for it (a progress bar with an ETA on stderr), "
        "then stream its rows (user_id,rank,movie_id,score, and in a CSV recommendation_id) into --out, CSV or "
        ".npy by its suffix. Each user's rows are what movierec recommend --user answers.",
    )
    p.add_argument("--users", required=True, help="'all', or comma-separated user ids, e.g. 1,2,3")
    p.add_argument("--k", type=int, default=10, help="movies per user, 1..100 (default %(default)s)")
    p.add_argument("--out", required=True, help="file.csv or file.npy")
    p.add_argument("--include-seen", action="store_true", help="do not exclude the movies a user rated")
    p.add_argument("--shard-users", type=int, default=None, help="users per shard (default 2000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--api", default=os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000"))
    p.set_defaults(func=_cmd_recommend_batch)


def _add_movie_commands(sub: Any) -> None:
    p = sub.add_parser("search", help="find movies of the active model's catalogue by title")
    p.add_argument("query", help="a title as typed, e.g. 'toy story' or 'the matrix 1999'")
    p.add_argument("--limit", type=int, default=10, help="at most this many (1..100, default %(default)s)")
    p.add_argument("--api", default=os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000"))
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser("similar", help="the movies nearest to one in the active model's index")
    p.add_argument("movie_id", type=int, help="a movie id of the model's dataset (see movierec search)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--api", default=os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000"))
    p.set_defaults(func=_cmd_similar)


def _add_feedback_commands(sub: Any) -> None:
    api = os.environ.get("MOVIEREC_API", "http://127.0.0.1:8000")
    p = sub.add_parser("rate", help="store ratings given after ingest (seen by the next recommendation)")
    p.add_argument("dataset", help="the dataset id (a feedback version's ratings go to its base)")
    p.add_argument(
        "pairs", nargs="*", metavar="USER MOVIE=RATING", help="a user id (a new one creates it), then movie=rating"
    )
    p.add_argument("--csv", help="a CSV of userId,movieId,rating[,timestamp], sent 10,000 rows a request")
    p.add_argument("--api", default=api)
    p.set_defaults(func=_cmd_rate)

    p = sub.add_parser("ratings", help="list a user's ratings: ingested, and posted since")
    p.add_argument("user_id", type=int)
    p.add_argument("--dataset", help="a dataset id (default: the active model's)")
    p.add_argument("--api", default=api)
    p.set_defaults(func=_cmd_ratings)

    p = sub.add_parser("events", help="post a JSON-lines file of events (impressions, clicks, plays, ratings)")
    p.add_argument(
        "file", help="one JSON event a line ({type, user_id, movie_id, recommendation_id?, ...}); - reads stdin"
    )
    p.add_argument("--batch", type=int, default=EVENTS_PER_REQUEST, choices=range(1, EVENTS_PER_REQUEST + 1),
                   metavar=f"1..{EVENTS_PER_REQUEST}", help="events a request (default %(default)s)")  # fmt: skip
    p.add_argument("--api", default=api)
    p.set_defaults(func=_cmd_events)

    p = sub.add_parser("experiment", help="start, watch, pause, resume, end or promote an A/B test or interleaving")
    p.add_argument("action", choices=("list", "show", "start", "pause", "resume", "end", "promote"))
    p.add_argument("name", nargs="?", help="the experiment's name (every action but list)")
    p.add_argument("models", nargs="*", help="start: the variants' model versions, the control first")
    p.add_argument("--kind", choices=("ab", "interleave"), default="ab", help="start: the kind (default ab)")
    p.add_argument("--shares", help="start, ab: the variants' shares, comma-separated (default equal)")
    p.add_argument("--k", type=int, default=10, help="start: CTR@k's k (default 10)")
    p.add_argument("--seed", type=int, help="start: buckets and coin flips that repeat")
    p.add_argument("--variant", help="promote: the variant to activate (default: the always-valid winner)")
    p.add_argument("--api", default=api)
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("delete", help="delete a dataset (with its models and feedback) or a model version")
    p.add_argument("what", choices=["dataset", "model"])
    p.add_argument("name", help="the dataset id or model version")
    p.add_argument("--api", default=api)
    p.set_defaults(func=_cmd_delete)


def _add_data_commands(sub: Any) -> None:
    p = sub.add_parser("synth", help="write a MovieLens-format directory of generated data")
    p.add_argument("out")
    p.add_argument("--movies", type=int, required=True)
    p.add_argument("--users", type=int, required=True)
    p.add_argument("--ratings", type=int, required=True)
    p.add_argument("--genome", action="store_true", help="also write genome-tags.csv and genome-scores.csv")
    p.add_argument("--taste", action="store_true",
                   help="draw from a model with taste: clusters, drifting users, tags that follow")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_synth)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except DataDirBusy as exc:  # up, demo, evaluate: another stack owns the data dir
        print(f"movierec: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
