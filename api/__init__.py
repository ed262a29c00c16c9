"""hv's second front end: Docker's Engine REST API (`hv system service`), beside `cli/`.

`api.http` speaks HTTP/1.1 (h11) on one connection, `api.server` listens and runs a thread
per connection, `api.app` routes Docker's paths to the handlers of `api.system`,
`api.containers` and `api.images`, which translate to and from `hv.engine.Engine`
(`api.translate` holds the JSON shapes, `api.streams` the hijacked byte streams).
"""
