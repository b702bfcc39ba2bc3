"""HTTP/REST front end: the Open Inference Protocol (KServe V2) as Triton serves it, on aiohttp."""
