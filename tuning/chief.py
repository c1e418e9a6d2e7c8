"""The chief of a chief/worker search: keras-tuner's oracle server, with
kpair's loop around it.

keras-tuner's own loop (`oracle_chief.start_server`) checks every 20 s,
once the search is over, whether the last trials have ended; it cannot say
when it listens, nor stop when the workers it waits for are gone. This one
serves the same gRPC service (`OracleServicer`) and ends on the same
condition: a worker was told the search is over, no trial is running and
every worker that asked for a trial has been told so.

keras-tuner has no heartbeat (#915): a trial handed to a worker stays
running until that worker reports, and a worker that is gone for good (its
machine lost, not restarted under its id) would keep the chief waiting.
The chief notes when it last heard of each trial from the worker running
it (`Leases`); a trial silent for `worker_timeout` seconds goes back to the
queue, to the next worker that asks, and a later report of it from the
worker it left is dropped. kpair's workers name themselves in the metadata
of every call (`TUNER_ID_KEY`) and ask for their trial at each epoch's end.
"""

import contextlib
import io
import os
import time
from concurrent import futures

import grpc

from kpair.errors import ConfigError

POLL_SECONDS = 1.0
# Default of `kpair tune --worker-timeout`: seconds without word of a trial
# from its worker after which the chief hands the trial to another. A live
# worker is silent from the trial's start to its first epoch's end (data,
# model build, tracing, one epoch and its evaluation), then for one epoch at
# a time; an hour is well above one epoch of a real trial, and a lost
# machine then costs the search an hour at most.
WORKER_TIMEOUT = 3600.0
# gRPC metadata key under which a kpair worker sends its tuner id.
TUNER_ID_KEY = "kpair-tuner-id"
# Seconds the server keeps answering after the search ended: a worker's last
# request (the reply that tells it to stop) completes.
GRACE_SECONDS = 2.0


class Leases:
    """Which worker runs each trial handed out, and when the chief last
    heard of the trial from it.

    Args:
        timeout: Seconds of silence after which a trial is taken back.
        clock: Function returning the time in seconds (monotonic).
    """

    def __init__(self, timeout=WORKER_TIMEOUT, clock=time.monotonic):
        check_worker_timeout(timeout)
        self.timeout, self.clock = float(timeout), clock
        self.owners, self.heard_at = {}, {}

    def handed(self, trial_id, tuner_id):
        """`trial_id` was handed (again) to `tuner_id`."""
        self.owners[trial_id] = tuner_id
        self.heard_at[trial_id] = self.clock()

    def heard(self, trial_id, tuner_id):
        """A report of `trial_id` from `tuner_id` (None: a worker that does
        not name itself); returns whether it comes from the worker running
        the trial (noted), else it is late (the trial was taken back, or
        ended)."""
        owner = self.owners.get(trial_id)
        if owner is None or tuner_id not in (None, owner):
            return False
        self.heard_at[trial_id] = self.clock()
        return True

    def silent(self):
        """(trial_id, tuner_id) of each trial not heard of for `timeout`."""
        now = self.clock()
        return [(t, self.owners[t]) for t, at in self.heard_at.items()
                if now - at > self.timeout]

    def drop(self, trial_id):
        """`trial_id` ended, or was taken back: none runs it."""
        self.owners.pop(trial_id, None)
        self.heard_at.pop(trial_id, None)


def check_worker_timeout(value):
    """Refuses a worker timeout that is not a positive number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < float("inf")):
        raise ConfigError(
            "`worker_timeout` must be a positive number of seconds. "
            f"Received: worker_timeout={value!r}"
        )


def caller_id(context):
    """The tuner id a kpair worker sent with its call, else None."""
    for key, value in context.invocation_metadata() or ():
        if key == TUNER_ID_KEY:
            return value
    return None


def _servicer_class(oracle_chief, service):
    """keras-tuner's `OracleServicer`, with reports of a trial from a worker
    that no longer runs it dropped (see the module's docstring)."""

    class Servicer(oracle_chief.OracleServicer):
        def UpdateTrial(self, request, context):
            if self.oracle.kpair_heard(request.trial_id, caller_id(context)):
                return super().UpdateTrial(request, context)
            trial = self.oracle.get_trial(request.trial_id)
            return service.UpdateTrialResponse(trial=trial.to_proto())

        def EndTrial(self, request, context):
            trial_id, tuner_id = request.trial.trial_id, caller_id(context)
            if self.oracle.kpair_heard(trial_id, tuner_id):
                return super().EndTrial(request, context)
            print(f"Trial {trial_id}: the late report of worker {tuner_id} "
                  "dropped (the trial was handed to another).", flush=True)
            return service.EndTrialResponse()

        def GetTrial(self, request, context):
            self.oracle.kpair_heard(request.trial_id, caller_id(context))
            return super().GetTrial(request, context)

    return Servicer


def serve(oracle, watch=None, poll_seconds=POLL_SECONDS):
    """Serves `oracle` on KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT until
    the search is over.

    Args:
        oracle: The chief's oracle.
        watch: Optional object: `watch.started()` is called once the server
            listens, `watch.check()` after every poll; an exception it
            raises stops the server and propagates (the state is saved at
            every change, so the search resumes).
        poll_seconds: Seconds between checks; at each, a trial whose worker
            was silent for longer than `oracle.kpair_leases` allows (set by
            run_search) goes back to the queue.

    Raises:
        kpair.errors.ConfigError: the address cannot be listened on.
    """
    # keras-tuner imports its gRPC modules only where it serves: they load
    # protobuf code that must match the installed protobuf.
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    ip = os.environ["KERASTUNER_ORACLE_IP"]
    port = os.environ["KERASTUNER_ORACLE_PORT"]
    # One thread, as keras-tuner's: the oracle's calls are serialized anyway.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = _servicer_class(oracle_chief, protos.get_service())(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(f"{ip}:{port}")
    except RuntimeError:  # grpc >= 1.60 raises where older ones returned 0
        bound = 0
    if not bound:
        raise ConfigError(
            f"The chief cannot listen on {ip}:{port} (in use, or not an "
            "address of this machine). Received: "
            f"KERASTUNER_ORACLE_IP={ip}, KERASTUNER_ORACLE_PORT={port}"
        )
    server.start()
    try:
        if watch is not None:
            watch.started()
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
            oracle.kpair_take_back_silent()
            if watch is not None:
                watch.check()
    finally:
        server.stop(GRACE_SECONDS).wait()


def quiet_scope_protos():
    """Silences keras-tuner 1.4.8's `Parent.to_proto`, which prints the first
    value of a conditional scope (a debug print left in: lines such as
    `group`) each time the search space passes between chief and worker.

    Its prints go to a discarded buffer; a thread printing meanwhile to a
    stream it holds (the workers' relays) is unaffected.
    """
    from keras_tuner.src.engine import conditions  # see serve: loaded where used

    original = conditions.Parent.to_proto
    if getattr(original, "kpair_quiet", False):
        return

    def to_proto(self):
        with contextlib.redirect_stdout(io.StringIO()):
            return original(self)

    to_proto.kpair_quiet = True
    conditions.Parent.to_proto = to_proto
