"""The request path: a `steering` object is validated (`steering_spec`, `errors`), resolved against
the served model and the library (`steering_resolver` -> `resolved_steering`), and encoded for
the engine (`wire_format`)."""
