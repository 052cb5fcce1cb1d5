"""A preloaded app traced with OpenTelemetry, set up as the OpenTelemetry docs tell preloading
servers to: the TracerProvider and its BatchSpanProcessor (a background exporter thread, which
does not survive a fork) are made in each worker by the post-fork hook. Spans go to
$OTEL_SPANS_DIR/spans-<pid>.jsonl through a SpanExporter, one JSON line per span.
"""
import json
import os
import threading
import time

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

tracer = trace.get_tracer("wsgiscale.test")


def post_fork(server, worker):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(FileExporter(), schedule_delay_millis=100))
    trace.set_tracer_provider(provider)
    worker.log.info("tracing set up in worker %s", worker.id)


def worker_exit(server, worker):
    trace.get_tracer_provider().shutdown()


class FileExporter(SpanExporter):
    """Writes each span as a JSON line to this worker's file."""

    def __init__(self):
        self.path = os.path.join(os.environ["OTEL_SPANS_DIR"], f"spans-{os.getpid()}.jsonl")

    def export(self, spans):
        with open(self.path, "a") as f:
            for s in spans:
                f.write(json.dumps({
                    "name": s.name,
                    "pid": os.getpid(),
                    "trace_id": format(s.context.trace_id, "032x"),
                    "thread": threading.current_thread().name,
                }) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


def application(environ, start_response):
    with tracer.start_as_current_span("request") as span:
        span.set_attribute("http.target", environ["PATH_INFO"])
        ms = int(environ.get("QUERY_STRING") or 0)
        if ms:
            time.sleep(ms / 1000)
        body = json.dumps({"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
