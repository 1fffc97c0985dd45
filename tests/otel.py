"""The real OpenTelemetry SDK with in-memory exporters, installed once per test process.

The OTel API allows setting the global providers only once, so tests share one provider
and each test clears the exporter (and reads metrics as deltas it computes itself).
"""

from __future__ import annotations

from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_state: dict[str, Any] = {}


def install() -> tuple[InMemorySpanExporter, InMemoryMetricReader]:
    """Install (once) and return the span exporter and metric reader."""
    if not _state:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        reader = InMemoryMetricReader()
        metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
        _state["exporter"] = exporter
        _state["reader"] = reader
    return _state["exporter"], _state["reader"]


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """All data points of the metric `name` (cumulative) currently held by the reader."""
    data = reader.get_metrics_data()
    points: list[Any] = []
    if data is None:
        return points
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


def counter_total(reader: InMemoryMetricReader, name: str, **attrs: Any) -> float:
    """Sum of a counter's points whose attributes include `attrs`."""
    total = 0.0
    for point in metric_points(reader, name):
        if all(point.attributes.get(k) == v for k, v in attrs.items()):
            total += point.value
    return total
