"""The benchmark's orchestrator: one command runs every scenario and writes JSON, Markdown and a PNG.

Processes: Azurite (node), the stand-ins (a child, :mod:`bench.standin_proc`), and one fresh child per
measured run (:mod:`bench.connector_proc`, :mod:`bench.baseline`, :mod:`bench.bare`), so each run's CPU
time and peak RSS are its own and nothing it measures shares a GIL with the services it talks to.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import bare, baseline, connector_proc, floor, sdk_upload, standin_proc
from bench.machine import machine_info
from bench.report import latency_ratio, write_reports
from standins.loopback import no_proxy_for_loopback

PROFILES = {"none": (0.0, 0.0), "realistic": (0.1, 0.05)}
#: The volume (x records) the latency target is measured at, as well as at 1x: 408,000 records, as issue 16 states it.
LATENCY_SCALE = 2.0
CONFIGS = {"alerts": "", "audit": standin_proc.AUDIT_STREAM}
_CTX = multiprocessing.get_context("spawn")


def _say(text: str) -> None:
    print(text, flush=True)


def _child(fn: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``fn(cfg)`` in a fresh process and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=_CTX) as pool:
        result: dict[str, Any] = pool.submit(fn, cfg).result()
    if "error" in result:
        raise RuntimeError(f"{fn.__module__}.{fn.__name__} failed:\n{result['error']}")
    return result


class StandInSession:
    """The stand-ins child with one published workload."""

    def __init__(self, workdir: Path, params: dict[str, Any], *, host: dict[str, str] | None = None) -> None:
        self._conn, child = _CTX.Pipe()
        self._proc = _CTX.Process(
            target=standin_proc.serve, args=(child, {**params, "workdir": str(workdir)}), daemon=True
        )
        self._proc.start()
        child.close()  # the child's end is the child's: one that dies ends the pipe, and a read says so
        self.info: dict[str, Any] = self._recv()
        self.info["env"].update(host or {})  # the connector's settings of every run on this workload

    def _recv(self) -> dict[str, Any]:
        try:
            reply: dict[str, Any] = self._conn.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(f"the stand-ins process ended without an answer (exit {self._proc.exitcode})") from None
        if "error" in reply:
            raise RuntimeError(f"stand-ins failed:\n{reply['error']}")
        return reply

    def call(self, command: str, args: Any = None) -> dict[str, Any]:
        self._conn.send((command, args))
        return self._recv()

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self.call("stop")
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


class AzuriteCpu:
    """CPU seconds Azurite spent between two marks."""

    def __init__(self, pid: int | None) -> None:
        import psutil

        self._proc = psutil.Process(pid) if pid else None

    def now(self) -> float:
        if self._proc is None:
            return 0.0
        total = 0.0
        for proc in [self._proc, *self._proc.children(recursive=True)]:
            try:
                times = proc.cpu_times()
            except Exception:
                continue
            total += times.user + times.system
        return total


def _connector_env(session: StandInSession, azurite_conn: str, audit_stream: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {
        **session.info["env"],
        "AzureWebJobsStorage": azurite_conn,
        "CONTENT_QUEUE": f"bench-{tag}",
        "STATE_TABLE_PREFIX": f"b{tag}",
        "POLL_SCHEDULE": "0 */5 * * * *",
        "LOGS_AUDIT_STREAM": audit_stream,
        # The benchmark lists and downloads a whole day of content within seconds. Under the default budget
        # (1,000 a minute, of which one 10 s slot may take 125) that burst waits for the next slot, and the
        # run would measure the budget (tests/faults prove it holds), not the connector: it gets the most allowed.
        "O365_MAX_REQUESTS_PER_MINUTE": "60000",
    }


def _measure_connector(
    session: StandInSession, azurite: Any, azurite_cpu: AzuriteCpu, config: str, profile: str, scale: float
) -> dict[str, Any]:
    session.call("reset")
    mark = azurite_cpu.now()
    result = _child(connector_proc.run, {"env": _connector_env(session, azurite.connection_string, CONFIGS[config])})
    result["azurite_cpu_seconds"] = azurite_cpu.now() - mark
    expect = ["alerts"] + (["audit"] if config == "audit" else [])
    result["arrived"] = session.call("collect", {"expect": expect})
    result.update(kind="connector", config=config, profile=profile, scale=scale)
    result["records"] = session.info["workload"]["records"]
    return result


def _measure_floor(session: StandInSession, azurite: Any, config: str) -> dict[str, Any]:
    """The bare work plus the requests a blob needs (:mod:`bench.floor`), with the host's concurrency."""
    from irm_connector.cli.queue_trigger import HostQueueOptions

    session.call("reset")
    env = _connector_env(session, azurite.connection_string, CONFIGS[config])
    cfg = {"env": env, "blob_file": session.info["blob_file"],
           "concurrency": HostQueueOptions.from_environment(env).concurrency}
    result = _child(floor.run, cfg)
    session.call("reset")  # its rows are not the connector's: the next run counts from nothing
    result.update(kind="floor", config=config, profile="-", scale=1.0, concurrency=cfg["concurrency"])
    return result


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from standins.azurite import Azurite

    out_dir = Path(args.out)
    workdir = Path(tempfile.mkdtemp(prefix="irm-bench-"))
    runs: list[dict[str, Any]] = []
    big: list[dict[str, Any]] = []
    burst: dict[str, Any] = {}
    sdk: list[dict[str, Any]] = []
    started = time.perf_counter()
    machine = machine_info()  # the version measured: taken before the run, a checkout may change meanwhile
    configs = [c for c in args.configs.split(",") if c]
    profiles = [p for p in args.profiles.split(",") if p]
    scales = [float(s) for s in args.scales.split(",") if s]
    params = {"records": args.records, "seed": args.seed}
    workload: dict[str, Any] = {}
    try:
        with Azurite(location=workdir / "azurite") as azurite:
            azurite_cpu = AzuriteCpu(azurite.pid)
            _say(f"==> Stand-ins: publishing a simulated tenant of {args.records:,} records")
            session = StandInSession(workdir / "main", params, host=args.host_queue)
            try:
                workload = session.info["workload"]
                _say(
                    f"    {workload['blobs']} blobs, {workload['records']:,} records "
                    f"({workload['duplicate_appearances']:,} duplicated across blobs), "
                    f"{workload['irm_alerts']:,} IRM alerts, {workload['bytes'] / 1e6:.1f} MB"
                )
                session.call("latency", PROFILES["none"])
                for config in configs:
                    runs += _cpu_rounds(session, azurite, azurite_cpu, config, args, connector="none" in profiles)
                for profile in profiles:
                    session.call("latency", PROFILES[profile])
                    for config in configs if profile != "none" else []:  # no latency: measured in the rounds
                        _say(f"==> Connector, {config}, network {profile}")
                        result = _measure_connector(session, azurite, azurite_cpu, config, profile, 1.0)
                        runs.append(result)
                        _say(f"    {_rate(result)}, peak RSS {result['peak_rss_mb']:.0f} MB")
                    if not args.skip_baseline:
                        _say(f"==> Seed-style baseline, network {profile}")
                        session.call("reset")
                        result = _child(baseline.run, {"env": session.info["env"]})
                        result["arrived"] = session.call("collect", {"expect": []})
                        result.update(kind="baseline", config="any", profile=profile, scale=1.0)
                        result["records"] = workload["records"]
                        runs.append(result)
                        _say(f"    {_rate(result)}")
                if args.sdk_blobs > 0:
                    for profile in profiles:
                        session.call("latency", PROFILES[profile])
                        for way in ("sdk", "connector"):
                            session.call("reset")
                            cfg = {"env": session.info["env"], "blob_file": session.info["blob_file"],
                                   "blobs": args.sdk_blobs, "way": way}
                            result = _child(sdk_upload.run, cfg)
                            result["profile"] = profile
                            sdk.append(result)
                            _say(f"==> Upload of {result['rows']:,} audit rows, {way} way, network {profile}: "
                                 f"{result['seconds']:.2f}s, {result['cpu_seconds']:.2f} CPU s, "
                                 f"{result['failed_chunks']} chunks refused")
                session.call("latency", (0.0, 0.0))
                if args.big_blob_mb > 0:
                    for config in configs:
                        _say(f"==> One {args.big_blob_mb:g} MB blob through the processor, {config}")
                        message = session.call("big_blob", {"mb": args.big_blob_mb})
                        session.call("reset")
                        env = _connector_env(session, azurite.connection_string, CONFIGS[config])
                        result = _child(connector_proc.run, {"env": env, "mode": "message", "message": message})
                        expect = ["alerts"] + (["audit"] if config == "audit" else [])
                        result["arrived"] = session.call("collect", {"expect": expect, "truth": "big"})
                        result.update(config=config, blob_mb=message["bytes"] / 1e6, records=message["records"])
                        big.append(result)
                        _say(
                            f"    {message['records']:,} records, {message['bytes'] / 1e6:.1f} MB: "
                            f"peak RSS {result['peak_rss_mb']:.0f} MB in {result['seconds']:.1f}s"
                            + (f"; FAILED: {result['failed']}" if result.get("failed") else "")
                        )
                if args.burst_mb > 0 and args.burst_blobs > 0:
                    burst = _measure_burst(session, azurite, args, "audit" if "audit" in configs else configs[0])
            finally:
                session.close()
            for scale in scales:
                records = int(args.records * scale)
                _say(f"==> Volume {scale:g}x: {records:,} records")
                session = StandInSession(workdir / f"scale{scale:g}", {**params, "records": records},
                                         host=args.host_queue)  # fmt: skip
                try:
                    for config in configs:
                        result = _measure_connector(session, azurite, azurite_cpu, config, "none", scale)
                        runs.append(result)
                        _say(f"    {config}: {_rate(result)}, peak RSS {result['peak_rss_mb']:.0f} MB")
                    if scale == LATENCY_SCALE and "realistic" in profiles:
                        # Issue 16 states the latency target at this volume, where the fixed waits (the first
                        # listing pages, the last downloads) weigh half what they do at 1x.
                        for config in configs:
                            runs.append(_latency_rounds(session, azurite, azurite_cpu, config, scale, args))
                finally:
                    session.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "scripts/bench.sh " + " ".join(args.argv),
        "machine": machine,
        "parameters": {
            "records": args.records,
            "seed": args.seed,
            "blob_records": [200, 5000],
            "irm_share": 0.01,
            "duplicate_share": 0.02,
            "profiles": {p: {"management_s": PROFILES[p][0], "ingestion_s": PROFILES[p][1]} for p in profiles},
            "scales": [1.0, *scales],
            "daily_records": args.daily_records,
            "host_queue": args.host_queue,  # host.json's queue settings overridden for this run, if any
        },
        "workload": workload,
        "runs": runs,
        "big_blob": big,
        "burst": burst,
        "sdk_upload": sdk,
        "total_seconds": time.perf_counter() - started,
    }
    write_reports(results, out_dir, chart=not args.no_chart)
    return results


def _cpu_rounds(
    session: StandInSession, azurite: Any, azurite_cpu: AzuriteCpu, config: str, args: argparse.Namespace,
    *, connector: bool,
) -> list[dict[str, Any]]:
    """The bare work, the I/O floor and the connector (no latency) of one configuration, in ``--cpu-runs``
    rounds. A round runs the bare work before and after the other two, and its ratios are taken against the
    mean of those two runs: a slow spell of the shared machine then weighs on both sides of a ratio instead of
    on one figure only. Each figure is the run of median CPU time, with every round's ratio beside it."""
    cfg = {"blob_file": session.info["blob_file"], "audit_stream": CONFIGS[config]}
    bares: list[dict[str, Any]] = []
    lows: list[dict[str, Any]] = []
    conns: list[dict[str, Any]] = []
    for number in range(1, args.cpu_runs + 1):
        _say(f"==> CPU round {number} of {args.cpu_runs}, {config}: bare work, "
             + ("I/O floor, " if not args.skip_floor else "") + ("connector, " if connector else "") + "bare work")
        before = _child(bare.run, cfg)
        low = None if args.skip_floor else _measure_floor(session, azurite, config)
        conn = _measure_connector(session, azurite, azurite_cpu, config, "none", 1.0) if connector else None
        after = _child(bare.run, cfg)
        bares += [before, after]
        per_record = (before["cpu_seconds"] + after["cpu_seconds"]) / (before["records"] + after["records"])
        for run in (low, conn):
            if run is not None:
                run["round_efficiency"] = per_record / (run["cpu_seconds"] / run["records"])
        if low is not None and conn is not None:
            conn["round_floor_ratio"] = (conn["cpu_seconds"] / conn["records"]) / (low["cpu_seconds"] / low["records"])
        lows += [low] if low is not None else []
        conns += [conn] if conn is not None else []
        _say("    bare work " + " / ".join(f"{r['cpu_seconds']:.2f}" for r in (before, after)) + " CPU s"
             + "".join(f"; {name} {r['cpu_seconds']:.2f} CPU s, efficiency {r['round_efficiency']:.2f}"
                       for name, r in (("I/O floor", low), ("connector", conn)) if r is not None))
    out = [{**_median_run(bares), "kind": "bare", "config": config, "profile": "-", "scale": 1.0}]
    out += [_median_run(lows)] if lows else []
    out += [_median_run(conns)] if conns else []
    for result in out[1:]:
        _say(f"    {result['kind']}: {_rate(result)}, median efficiency {result['efficiency']:.2f}{_spread(result)}")
    return out


def _latency_rounds(
    session: StandInSession, azurite: Any, azurite_cpu: AzuriteCpu, config: str, scale: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The connector with realistic latency, in ``--latency-rounds`` rounds: each runs it without latency and
    then with it, back to back, and takes the ratio of their rates, so that a slow spell of the shared machine
    weighs on both sides of the ratio, not on one run only (single pairs read 0.79 to 0.96 on one commit). The
    run of the median round, with every round's ratio."""
    slows: list[dict[str, Any]] = []
    fasts: list[dict[str, Any]] = []
    for number in range(1, args.latency_rounds + 1):
        session.call("latency", PROFILES["none"])
        fast = _measure_connector(session, azurite, azurite_cpu, config, "none", scale)
        session.call("latency", PROFILES["realistic"])
        slow = _measure_connector(session, azurite, azurite_cpu, config, "realistic", scale)
        slow["round_latency_ratio"] = latency_ratio(slow, fast)
        slows.append(slow)
        fasts.append(fast)
        _say(f"    latency round {number} of {args.latency_rounds}, {config}: {_rate(fast)} without latency, "
             f"{_rate(slow)} with it: {slow['round_latency_ratio']:.2f}")
    session.call("latency", PROFILES["none"])
    ordered = sorted(slows, key=lambda r: r["round_latency_ratio"])
    median = {**ordered[len(ordered) // 2], "latency_ratio_rounds": [r["round_latency_ratio"] for r in slows]}
    median["latency_ratio"] = statistics.median(median["latency_ratio_rounds"])
    median["every_run_exactly_once"] = _every_run_exactly_once([*slows, *fasts])
    return median


def _measure_burst(session: StandInSession, azurite: Any, args: argparse.Namespace, config: str) -> dict[str, Any]:
    """Many large blobs delivered to one worker at once (a catch-up burst): the bound on body bytes in flight
    (MAX_BLOB_MB_IN_FLIGHT, its default) against the process's peak RSS."""
    _say(f"==> {args.burst_blobs} blobs of {args.burst_mb:g} MB delivered at once, {config}")
    messages = session.call("burst", {"mb": args.burst_mb, "blobs": args.burst_blobs})["messages"]
    session.call("reset")
    env = _connector_env(session, azurite.connection_string, CONFIGS[config])
    result = _child(connector_proc.run, {"env": env, "mode": "messages", "messages": messages})
    expect = ["alerts"] + (["audit"] if config == "audit" else [])
    result["arrived"] = session.call("collect", {"expect": expect, "truth": "burst"})
    result.update(config=config, blobs=len(messages), blob_mb=messages[0]["bytes"] / 1e6)
    _say(
        f"    {result.get('records', 0):,} records, {sum(m['bytes'] for m in messages) / 1e6:.0f} MB: peak RSS "
        f"{result['peak_rss_mb']:.0f} MB in {result['seconds']:.1f}s"
        + (f"; FAILED: {result['failed']}" if result.get("failed") else "")
    )
    return result


def _rate(result: dict[str, Any]) -> str:
    return (
        f"{result['records'] / result['seconds']:,.0f} records/s "
        f"({result['seconds']:.2f}s, {result['cpu_seconds']:.2f} CPU s)"
    )


def _spread(result: dict[str, Any]) -> str:
    """The CPU seconds of each run of a figure measured more than once, for the console; else nothing."""
    runs = result.get("cpu_seconds_runs", [])
    return "; CPU s of the runs: " + ", ".join(f"{c:.2f}" for c in runs) if len(runs) > 1 else ""


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median CPU time, with every run's CPU seconds (a run of a few CPU seconds moves by up to a
    third from one run to the next on a shared machine) and, for runs measured in rounds, the median of the
    rounds' ratios and each of them. Of a connector's runs, each must have sent every record exactly once."""
    ordered = sorted(results, key=lambda r: r["cpu_seconds"])
    median = {**ordered[len(ordered) // 2], "cpu_seconds_runs": [r["cpu_seconds"] for r in results]}
    for key, name in (("round_efficiency", "efficiency"), ("round_floor_ratio", "floor_ratio")):
        if all(key in r for r in results):
            median[f"{name}_rounds"] = [r[key] for r in results]
            median[name] = statistics.median(median[f"{name}_rounds"])
        median.pop(key, None)
    if all("arrived" in r for r in results):  # a connector's runs: each must have sent every record once
        median["every_run_exactly_once"] = _every_run_exactly_once(results)
    return median


def _every_run_exactly_once(results: list[dict[str, Any]]) -> bool:
    """Whether each of a connector's runs sent every record of every stream exactly once."""
    return all(all(s.get("exactly_once", False) for s in r["arrived"]["streams"].values()) for r in results)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("--records", type=int, default=200_000, help="records in the simulated tenant (1x)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--configs", default="alerts,audit", help="alerts (default settings), audit (every record)")
    parser.add_argument("--profiles", default="none,realistic", help="network profiles: none, realistic")
    parser.add_argument("--scales", default="0.5,2", help="extra volumes (x records) for the RSS series; '' = none")
    parser.add_argument("--big-blob-mb", type=float, default=50.0, help="size of the one-blob RSS run; 0 = skip")
    parser.add_argument("--burst-mb", type=float, default=25.0, help="size of each blob of the burst run; 0 = skip")
    parser.add_argument("--burst-blobs", type=int, default=12, help="blobs delivered at once in the burst run")
    parser.add_argument("--sdk-blobs", type=int, default=20, help="blobs of audit rows for the SDK upload comparison")
    parser.add_argument("--cpu-runs", type=int, default=3,
                        help="rounds of the CPU measurement: the bare work, the I/O floor, the connector (no latency, "
                             "1x) and the bare work again; the median round's ratio counts")
    parser.add_argument("--latency-rounds", type=int, default=3,
                        help="rounds of the latency target's pair of runs (without, then with latency)")
    parser.add_argument("--skip-floor", action="store_true", help="no I/O floor runs")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--daily-records", type=int, default=1_000_000,
                        help="audit records a day of the tenant the monthly cost estimate is for")
    parser.add_argument("--batch-size", type=int, help="host.json's queues.batchSize for this run (a trial)")
    parser.add_argument("--new-batch-threshold", type=int, help="host.json's queues.newBatchThreshold for this run")
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    for option in ("records", "cpu_runs", "latency_rounds", "daily_records"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    from irm_connector.cli.queue_trigger import OVERRIDE_PREFIX, HostQueueOptions
    from irm_connector.errors import SettingsError

    # As the app settings that override host.json on Azure: the children drop such settings from the environment
    # they inherit (standins.environment), so that a shell's own cannot change a run unasked.
    args.host_queue = {f"{OVERRIDE_PREFIX}{name}": str(value) for name, value in
                       (("batchSize", args.batch_size), ("newBatchThreshold", args.new_batch_threshold))
                       if value is not None}  # fmt: skip
    try:
        HostQueueOptions.from_environment(args.host_queue)
    except SettingsError as exc:
        parser.error(str(exc))
    args.argv = argv
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    no_proxy_for_loopback()  # Azurite and the stand-ins are on this machine; the measured children inherit it
    # A `kill` ends the run as Ctrl-C does, through the cleanup (Azurite, the stand-ins, the working directory):
    # Python's default ended the process at once and left them running and on disk.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = run_benchmark(args)
    except KeyboardInterrupt:
        _say("==> Interrupted: no results written")
        return 130
    _say(f"==> Done in {results['total_seconds']:.0f}s; results in {args.out}/latest.json, latest.md, latest.png")
    print((Path(args.out) / "latest.md").read_text(), flush=True)
    wrong = [name for name, ok in results["correct"].items() if ok is False]
    if wrong:  # figures of a run that lost or doubled records measure something else: said, and not exit 0
        _say(f"==> Not every record arrived exactly once ({', '.join(wrong)}): the figures above do not count")
        return 1
    return 0
