"""The API-server process: routes, the request gateway and its middleware, OpenAPI, admin auth,
the endpoint-plugin guard and engine-death handling. Imports no torch."""
