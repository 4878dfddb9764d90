"""A/B experiments on live traffic: config, assignment, exposure/feedback logs, results.

Pure domain code (no vLLM imports): the API plugin calls `ArmSelector` from the gateway and
`ResponseObserver` from its middleware, and the results/report modules only read the logs.
"""
