"""Protocol-neutral inference request and response: what the front ends translate to and from.

Plain slotted dataclasses (no validation framework) because one is built per request. Tensor data is
already a numpy array here: the front end's codec decoded it (zero-copy for fixed-size types), checked
datatype names and byte counts; the model version checks names and shapes against the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

Parameters = dict[str, Any]  # values are bool, int, float or str, as the protocol allows


@dataclass(slots=True)
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: Parameters | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # HTTP binary_data parameter; None = the protocol's default
    parameters: Parameters | None = None


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[InferInput]
    model_version: str = ""  # "" = the router decides
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty = every output
    parameters: Parameters | None = None
    routing_key: str | None = None  # x-routing-key header/metadata or the routing_key parameter
    protocol: str = "grpc"  # "grpc" | "http": a label for records, never a branch in the core
    deadline: float | None = (
        None  # time.monotonic() by which the answer is useless (gRPC deadline, HTTP timeout)
    )


@dataclass(slots=True)
class InferOutput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray
    binary: bool | None = None  # carried over from the RequestedOutput for the HTTP codec


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutput]
    parameters: Parameters | None = None
