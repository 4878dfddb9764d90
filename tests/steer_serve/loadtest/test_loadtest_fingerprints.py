"""The fingerprint check: an answer counts as steered-as-asked only when its header equals the
fingerprint of the spec it sent (or of its experiment arm); any other header, or one on an answer
that was due none, is a mismatch reported among the errors."""

from __future__ import annotations

from steer_serve.library.vector_library import VectorLibrary
from steer_serve.loadtest import fingerprints as fp
from steer_serve.loadtest.engine import RequestRecord
from steer_serve.loadtest.scenario import parse_scenario
from steer_serve.loadtest.traffic import plan_requests
from steer_serve.model_shape import ModelShape
from steer_serve.request.errors import parse_steering
from steer_serve.request.steering_resolver import SteeringResolver
from steer_serve.settings import Settings

SCENARIO = parse_scenario({
    "model": "m", "prompts": {"input_tokens": 4, "output_tokens": 2},
    "traffic": [{"name": "plain", "weight": 1},
                {"name": "random", "weight": 2, "random_vectors": {"count": 3, "layers": [1, 2], "scale": 0.5}},
                {"name": "ab", "weight": 1, "users": {"pool": 5}}],
    "arrival": {"concurrency": 4}, "requests": 40, "seed": 3})
ARMS = {("exp", "control"): None, ("exp", "steered"): "f" * 32}


def server_side(tmp_path) -> fp.Expected:
    """What the server would report: steer_serve.request's own resolution of each inline spec."""
    shape = ModelShape("m", hidden_size=8, num_layers=4, num_heads=2)
    resolver = SteeringResolver(shape, VectorLibrary(tmp_path, shape), Settings())
    requests = plan_requests(SCENARIO, 40, 3, "run", vocab_size=1000, dim=8, file_prompts=None)
    specs = {fp.spec_key(r.overrides["steering"]): r.overrides["steering"] for r in requests
             if r.traffic_class == "random"}
    return fp.Expected({key: resolver.resolve(parse_steering(spec)).fingerprint for key, spec in specs.items()}, ARMS)


def answers(requests, expected: fp.Expected) -> list[RequestRecord]:
    """Every answer as a correct server gives it: the arm alternates for the ab class."""
    records = []
    for i, r in enumerate(requests):
        headers = {}
        if r.traffic_class == "random":
            headers[fp.FINGERPRINT] = expected.by_spec[fp.spec_key(r.overrides["steering"])]
        if r.traffic_class == "ab":
            arm = ("control", "steered")[i % 2]
            headers.update({fp.EXPERIMENT: "exp", fp.ARM: arm})
            if arm == "steered":
                headers[fp.FINGERPRINT] = ARMS[("exp", "steered")]
        records.append(RequestRecord(r.request_id, r.traffic_class, True, 200, "", 0.1, 0.2, 2, 4, headers))
    return records


def test_correct_answers_all_match(tmp_path) -> None:
    expected = server_side(tmp_path)
    requests = plan_requests(SCENARIO, 40, 3, "run", vocab_size=1000, dim=8, file_prompts=None)
    checked = fp.check(requests, answers(requests, expected), expected)
    n_random = sum(r.traffic_class == "random" for r in requests)
    assert checked["random"]["matched"] == n_random and checked["random"]["mismatched"] == 0
    assert len(checked["random"]["expected"]) == 3  # three distinct inline vectors, three fingerprints
    assert checked["plain"]["matched"] == checked["plain"]["mismatched"] == 0
    steered_arm = sum(r.get("x-steer-serve-arm") == "steered" for r in (a.headers for a in answers(requests, expected)))
    assert checked["ab"] == {"matched": steered_arm, "mismatched": 0, "example": "", "expected": ["f" * 32]}
    assert fp.mismatch_errors(checked) == {}


def test_swapped_stray_and_missing_fingerprints_are_errors(tmp_path) -> None:
    expected = server_side(tmp_path)
    requests = plan_requests(SCENARIO, 40, 3, "run", vocab_size=1000, dim=8, file_prompts=None)
    records = answers(requests, expected)
    random_rows = [i for i, r in enumerate(requests) if r.traffic_class == "random"]
    a, b = [i for i in random_rows if requests[i].overrides != requests[random_rows[0]].overrides][0], random_rows[0]
    records[a].headers[fp.FINGERPRINT], records[b].headers[fp.FINGERPRINT] = (records[b].headers[fp.FINGERPRINT],
                                                                              records[a].headers[fp.FINGERPRINT])
    plain = next(i for i, r in enumerate(requests) if r.traffic_class == "plain")
    records[plain].headers[fp.FINGERPRINT] = "0" * 32  # an unsteered answer that came back steered
    control = next(i for i, r in enumerate(records) if r.headers.get(fp.ARM) == "control")
    records[control].headers[fp.FINGERPRINT] = "f" * 32  # a control arm answered as the steered one
    steered = next(i for i, r in enumerate(records) if r.headers.get(fp.ARM) == "steered")
    del records[steered].headers[fp.FINGERPRINT]  # a steered arm answered unsteered
    failed = random_rows[-1]
    records[failed] = RequestRecord(records[failed].request_id, "random", False, 500, "boom", 0, 0, 0, 4, {})
    checked = fp.check(requests, records, expected)
    assert checked["random"]["mismatched"] == 2 and checked["random"]["matched"] == len(random_rows) - 3
    assert checked["plain"]["mismatched"] == 1 and "0" * 32 in checked["plain"]["example"]
    assert checked["ab"]["mismatched"] == 2
    errors = fp.mismatch_errors(checked)
    assert errors["fingerprint mismatch"]["count"] == 5
    assert errors["fingerprint mismatch"]["classes"] == {"random": 2, "plain": 1, "ab": 2}


def test_spec_key_ignores_field_order() -> None:
    one = {"interventions": [{"type": "add", "vector": "v", "scale": 2}]}
    two = {"interventions": [{"scale": 2, "vector": "v", "type": "add"}]}
    assert fp.spec_key(one) == fp.spec_key(two) != fp.spec_key({"preset": "v"})
