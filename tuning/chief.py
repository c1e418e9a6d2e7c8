"""The chief of a chief/worker search: keras-tuner's oracle server, with
kpair's loop around it.

keras-tuner's own loop (`oracle_chief.start_server`) checks every 20 s,
once the search is over, whether the last trials have ended; it cannot say
when it listens, nor stop when the workers it waits for are gone. This one
serves the same gRPC service (`OracleServicer`) and ends on the same
condition: a worker was told the search is over, no trial is running and
every worker that asked for a trial has been told so.
"""

import contextlib
import io
import os
import time
from concurrent import futures

import grpc

from kpair.errors import ConfigError

POLL_SECONDS = 1.0
# Seconds the server keeps answering after the search ended: a worker's last
# request (the reply that tells it to stop) completes.
GRACE_SECONDS = 2.0


def serve(oracle, watch=None, poll_seconds=POLL_SECONDS):
    """Serves `oracle` on KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT until
    the search is over.

    Args:
        oracle: The chief's oracle.
        watch: Optional object: `watch.started()` is called once the server
            listens, `watch.check()` after every poll; an exception it
            raises stops the server and propagates (the state is saved at
            every change, so the search resumes).
        poll_seconds: Seconds between checks.

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
    servicer = oracle_chief.OracleServicer(oracle)
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
