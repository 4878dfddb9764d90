"""Steering policy: which caller may steer what (`steer-serve serve --policy FILE`).

model.py is the strict YAML schema, matching.py the name/glob/content-hash patterns, check.py
decides one request (or preset, or arm) against one rule, loader.py reads the file and checks it
against the served library, gate.py holds the policy in force (callers by key hash, presets and
arms at load, reload that keeps the old policy on any error).
"""
