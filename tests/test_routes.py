"""Routed prompts (issue 10): routes in the manifest, exact under forget, per-route caches, the
routing rule in ask, prompt control and parameter reuse on refit, and fits from before routes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import FIT, erase, find_bytes, make_records, record_needles, write_jsonl

from erase_cli import generation, prompt, service
from erase_cli import qkmeans as qk
from erase_cli.answer import Question
from erase_cli.embed import FakeEmbedder
from erase_cli.errors import InvalidInput, InvalidParameter
from erase_cli.llm import FakeGenerator
from erase_cli.records import normalise_vector
from erase_cli.store import open_store

FIXTURES = Path(__file__).parent / "fixtures"


def manifest_of(store: Path) -> dict:
    return orjson.loads((store / "manifest.json").read_bytes())


def current_generation(store: Path) -> str:
    return str(generation.read(store.resolve()).generation)


def fake_model(tmp_path: Path) -> str:
    model = tmp_path / "fake.gguf"
    model.write_bytes(b"GGUF")
    return str(model)


@pytest.fixture
def vec_store(tmp_path):
    """A --vector-field store of 30 records in 6 blobs, fitted with routes of 3."""
    store = tmp_path / "vec"
    records = make_records(30, dim=16)
    data = write_jsonl(tmp_path / "vec.jsonl", records)
    service.ingest(store, str(data), vector_field="vec")
    service.fit(store, **FIT)
    return store, records


def test_manifest_has_a_route_per_nonempty_cluster_nearest_last(vec_store):
    store, records = vec_store
    m = manifest_of(store)
    assert m["format"] == "erase-manifest/2" and m["route_size"] == 3
    with open_store(store, write=False) as st:
        state = qk.State.from_arrays(st.state_arrays())
    assert [r["cluster"] for r in m["routes"]] == [j for j, _ in state.routes]
    for r, (j, ids) in zip(m["routes"], state.routes):
        assert [e["id"] for e in r["examples"]] == list(reversed(ids))  # nearest last
        assert len(ids) == min(3, int(state.final_counts[j]))
        assert r["prompt_digest"] == prompt.digest(r["examples"], m["prompt"])
        # the route's last example is the cluster's global example
        assert r["examples"][-1]["id"] == next(e["id"] for e in m["examples"] if e["cluster"] == j)
    assert m["prompt_digest"] == prompt.digest(m["examples"], m["prompt"])


def test_route_members_are_the_nearest_by_exact_distance(vec_store):
    store, records = vec_store
    m = manifest_of(store)
    proj = qk.Projector(16, 8, 0)
    x = proj(qk.to_fixed(np.stack([normalise_vector(r.vector) for r in records])))
    ids = [r.id for r in records]
    C = np.asarray(m["centroids"], dtype=np.int64)
    labels, d2 = qk.assign(x, C)
    for r in m["routes"]:
        j = r["cluster"]
        members = sorted((int(d), i) for i, lab, d in zip(ids, labels, d2) if lab == j)
        assert [e["id"] for e in reversed(r["examples"])] == [i for _, i in members[:3]]


def test_forget_equals_refit_on_routes_and_reports_routes_changed(vec_store, tmp_path):
    store, records = vec_store
    before = manifest_of(store)
    route_of = {e["id"]: r["cluster"] for r in before["routes"] for e in r["examples"]}
    victim = next(i for i in route_of if i not in {e["id"] for e in before["examples"]})
    report = service.forget(store, [victim])
    after = manifest_of(store)
    changed = report["batch"]["routes_changed"]
    digests = lambda m: {r["cluster"]: r["prompt_digest"] for r in m["routes"]}  # noqa: E731
    assert changed == sorted(j for j in digests(before) if digests(before)[j] != digests(after).get(j))
    if not report["batch"]["crossings"]:
        assert changed == [route_of[victim]]
    # byte-identical to a brand-new store of the survivors
    fresh = tmp_path / "fresh"
    service.ingest(
        fresh, str(write_jsonl(tmp_path / "s.jsonl", [r for r in records if r.id != victim])), vector_field="vec"
    )
    service.fit(fresh, **FIT)
    assert (store / "manifest.json").read_bytes() == (fresh / "manifest.json").read_bytes()
    assert service.verify(store)["identical"]
    assert service.status(store)["counters"]["route_changes"] == len(changed)


def test_dry_run_names_the_routes_a_member_leaves(vec_store):
    store, _ = vec_store
    m = manifest_of(store)
    r = m["routes"][0]
    dry = service.forget(store, [r["examples"][0]["id"]], dry_run=True)
    assert r["cluster"] in dry["batch"]["routes_changed"]


def routed_answers(store, tmp_path, questions, **kw):
    return list(service.ask(store, questions, model=fake_model(tmp_path), generator_factory=FakeGenerator, **kw))


def test_routed_ask_uses_the_nearest_cluster_and_names_it(vec_store, tmp_path):
    store, records = vec_store
    m = manifest_of(store)
    proj = qk.Projector(16, 8, 0)
    C = np.asarray(m["centroids"], dtype=np.int64)
    live = [r["cluster"] for r in m["routes"]]
    qs = [Question(f"q{i}", None, tuple(normalise_vector(r.vector).tolist())) for i, r in enumerate(records[:12])]
    out = routed_answers(store, tmp_path, qs, mode="routed")
    for q, a in zip(qs, out):
        x = proj(qk.to_fixed(np.asarray([q.vector], dtype=np.float32)))[0]
        d2 = {j: int(((C[j] - x) ** 2).sum()) for j in live}
        j = min(live, key=lambda c: (d2[c], c))
        assert a["erase"] == {
            "mode": "routed",
            "route": j,
            "prompt_digest": m["routes"][live.index(j)]["prompt_digest"],
            "generation": current_generation(store),
            "stale": False,
        }
    # one cache file per route used, each named by its route's digest
    used = {a["erase"]["prompt_digest"] for a in out}
    assert {p.name.split("-")[0] for p in (store / "cache").glob("*.kv")} == used


def test_modes_on_a_vector_field_store(vec_store, tmp_path):
    store, _ = vec_store
    m = manifest_of(store)
    [auto] = routed_answers(store, tmp_path, [Question("q")])
    assert auto["erase"] == {
        "mode": "global",
        "route": None,
        "prompt_digest": m["prompt_digest"],
        "generation": current_generation(store),
        "stale": False,
    }
    with pytest.raises(InvalidInput, match="--query-vector"):
        routed_answers(store, tmp_path, [Question("q")], mode="routed")
    with pytest.raises(InvalidInput, match="16"):
        routed_answers(store, tmp_path, [Question("q", None, (1.0, 0.0))], mode="routed")
    with pytest.raises(InvalidParameter, match="auto"):
        routed_answers(store, tmp_path, [Question("q")], mode="nearest")


def test_auto_routes_a_store_that_embeds_its_questions(text_store, tmp_path):
    out = routed_answers(text_store, tmp_path, [Question("text marker TXT03X"), Question("something else")])
    assert all(a["erase"]["mode"] == "routed" and a["erase"]["route"] is not None for a in out)
    m = manifest_of(text_store)
    # the route is the rule's answer for the question embedded as ingest embeds it
    [v] = list(FakeEmbedder(16).embed(["text marker TXT03X"]))
    x = qk.Projector(16, 8, 0)(qk.to_fixed(v))[0]
    C = np.asarray(m["centroids"], dtype=np.int64)
    assert out[0]["erase"]["route"] == qk.route(C, [r["cluster"] for r in m["routes"]], x)
    [g] = routed_answers(text_store, tmp_path, [Question("x")], mode="global")
    assert g["erase"]["mode"] == "global" and g["erase"]["prompt_digest"] == m["prompt_digest"]


def test_forget_deletes_only_the_changed_routes_caches(vec_store, tmp_path):
    store, records = vec_store
    m = manifest_of(store)
    by_id = {r.id: r for r in records}
    # warm every route's cache (and the global one) through the real save path
    qs = [
        Question("q", None, tuple(normalise_vector(by_id[r["examples"][-1]["id"]].vector).tolist()))
        for r in m["routes"]
    ]
    routed_answers(store, tmp_path, qs, mode="routed")
    routed_answers(store, tmp_path, [Question("q")], mode="global")
    files = {p.name.split("-")[0] for p in (store / "cache").glob("*.kv")}
    assert files == {r["prompt_digest"] for r in m["routes"]} | {m["prompt_digest"]}
    victim = m["routes"][0]["examples"][0]["id"]
    report = service.forget(store, [victim])
    after = manifest_of(store)
    left = {p.name.split("-")[0] for p in (store / "cache").glob("*.kv")}
    assert left == files & ({r["prompt_digest"] for r in after["routes"]} | {after["prompt_digest"]})
    assert len(left) < len(files) and report["batch"]["routes_changed"]
    assert any(p.startswith("cache/") for p in report["batch"]["purged"])
    assert find_bytes(store, record_needles([by_id[victim]])) == {}


def test_save_skips_a_route_that_changed_while_answering(vec_store, tmp_path):
    """A forget between choosing a route and saving its cache: the stale prefix is not saved."""
    store, records = vec_store
    m = manifest_of(store)
    route = m["routes"][0]
    vec = next(r for r in records if r.id == route["examples"][-1]["id"]).vector

    class ForgetFirst(FakeGenerator):
        def set_prefix(self, text, cache_file=None):
            service.forget(store, [route["examples"][0]["id"]])
            return super().set_prefix(text, cache_file)

    list(
        service.ask(
            store,
            [Question("q", None, tuple(normalise_vector(vec).tolist()))],
            mode="routed",
            model=fake_model(tmp_path),
            generator_factory=ForgetFirst,
        )
    )
    assert not list((store / "cache").glob(f"{route['prompt_digest']}-*.kv"))


def test_refit_keeps_parameters_and_format_and_says_so(tmp_path):
    store = tmp_path / "s"
    records = make_records(24, dim=16)
    service.ingest(store, str(write_jsonl(tmp_path / "a.jsonl", records[:20])), vector_field="vec")
    first = service.fit(store, k=3, eps=0.2, dim=8, seed=5, max_iter=2, route_size=2, instruction="Sort the tickets.")
    assert first["reused"] == []
    service.ingest(store, str(write_jsonl(tmp_path / "b.jsonl", records[20:])), vector_field="vec", append=True)
    again = service.fit(store)
    used = (again["k"], again["dim"], again["seed"], again["max_iter"], again["route_size"])
    assert used == (3, 8, 5, 2, 2) and again["eps"] == pytest.approx(0.2, abs=1e-4)
    assert set(again["reused"]) >= {"k", "eps", "dim", "seed", "max_iter", "route_size", "instruction"}
    assert again["prompt_format"]["instruction"] == "Sort the tickets."
    r = erase("fit", "--store", str(store))
    assert r.returncode == 0 and "kept from the previous fit: k, eps" in r.stderr + r.stdout


def test_prompt_format_is_stored_digested_and_used(vec_store, tmp_path):
    store, _ = vec_store
    plain = manifest_of(store)
    service.fit(store, instruction="Classify the message.", input_prefix="Message: ", output_prefix="\nIntent:")
    m = manifest_of(store)
    assert m["prompt"] == {
        "instruction": "Classify the message.",
        "input_prefix": "Message: ",
        "output_prefix": "\nIntent:",
        "separator": "\n\n",
    }
    assert m["examples"] == plain["examples"] and m["prompt_digest"] != plain["prompt_digest"]
    assert service.verify(store)["identical"]
    made = []

    def factory(path, **kw):
        made.append(FakeGenerator(path, **kw))
        return made[-1]

    list(service.ask(store, [Question("hi")], model=fake_model(tmp_path), generator_factory=factory))
    assert made[0].prefix.startswith("Classify the message.\n\nMessage: ")


def test_a_fit_from_before_routes_serves_globally_until_refitted(tmp_path):
    store = tmp_path / "old"
    shutil.copytree(FIXTURES / "store-v1", store)
    (store / "secret").chmod(0o600)  # git does not keep the mode
    assert manifest_of(store)["format"] == "erase-manifest/1"
    [a] = routed_answers(store, tmp_path, [Question("q")])
    assert a["erase"]["mode"] == "global"
    with pytest.raises(InvalidParameter, match="erase fit"):
        routed_answers(store, tmp_path, [Question("q")], mode="routed")
    assert service.verify(store)["identical"]
    rid = manifest_of(store)["examples"][0]["id"]
    report = service.forget(store, [rid])
    assert report["batch"]["routes_changed"] == [] and manifest_of(store)["format"] == "erase-manifest/1"
    assert service.verify(store)["identical"]
    service.fit(store)
    assert manifest_of(store)["format"] == "erase-manifest/2" and manifest_of(store)["routes"]


def test_ask_cli_mode_and_query_vector_errors(vec_store, tmp_path):
    store, records = vec_store
    model = fake_model(tmp_path)
    r = erase("ask", "q", "--mode", "routed", "--model", model, "--store", str(store), "--json")
    assert r.returncode == 1 and "--query-vector" in json.loads(r.stdout)["error"]["message"]
    r = erase("ask", "q", "--query-vector", "[1, 2", "--model", model, "--store", str(store))
    assert r.returncode == 1 and "not JSON" in r.stderr
    r = erase("ask", "q", "--query-vector", "@/nonexistent/v.json", "--model", model, "--store", str(store))
    assert r.returncode != 0 and "does not exist" in r.stderr
    r = erase("ask", "q", "--mode", "sideways", "--model", model, "--store", str(store))
    assert r.returncode == 1 and "--mode 'sideways' is not one of auto, routed, global" in r.stderr


def test_prompt_command_prints_the_exact_text(vec_store, text_store, tmp_path):
    store, _ = vec_store
    m = manifest_of(store)
    fmt = prompt.PromptFormat.from_stored(m["prompt"])
    r = erase("prompt", "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert r.stdout == prompt.prefix_text(fmt, m["examples"]) + "\n"
    assert "global prompt" in r.stderr
    route = m["routes"][1]
    r = erase("prompt", "--route", str(route["cluster"]), "--store", str(store), "--json")
    out = json.loads(r.stdout)
    assert out["text"] == prompt.prefix_text(fmt, route["examples"])
    assert out["route"] == route["cluster"] and out["prompt_digest"] == route["prompt_digest"]
    assert [e["id"] for e in out["examples"]] == [e["id"] for e in route["examples"]]
    r = erase("prompt", "--route", "99", "--store", str(store))
    assert r.returncode == 1 and "--route 99 is not a route" in r.stderr
    # a question is routed as ask routes it, and follows the prompt
    tm = manifest_of(text_store)
    r = erase(
        "prompt", "text marker TXT05X", "--choices", "L0", "--choices", "L1", "--store", str(text_store), "--json"
    )
    out = json.loads(r.stdout)
    [answer] = routed_answers(text_store, tmp_path, [Question("text marker TXT05X")])
    assert out["route"] == answer["erase"]["route"] and out["mode"] == "routed"
    examples = tm["routes"][[x["cluster"] for x in tm["routes"]].index(out["route"])]["examples"]
    tfmt = prompt.PromptFormat.from_stored(tm["prompt"])
    assert out["text"] == prompt.prefix_text(tfmt, examples) + prompt.query_text(
        tfmt, "text marker TXT05X", ["L0", "L1"]
    )


def test_status_shows_demonstrations_and_label_balance(text_store):
    r = erase("status", "--store", str(text_store), "--json")
    fit = json.loads(r.stdout)["fit"]
    m = manifest_of(text_store)
    assert [(e["id"], e["target"]) for e in fit["examples"]] == [(e["id"], e["target"]) for e in m["examples"]]
    assert all(e["input_start"].startswith("text marker TXT") for e in fit["examples"])
    assert sum(fit["label_balance"].values()) == len(m["examples"])
    for shown, route in zip(fit["routes"], m["routes"]):
        labels = [e["target"] for e in route["examples"]]
        assert shown["label_balance"] == {t: labels.count(t) for t in shown["label_balance"]}
        assert sum(shown["label_balance"].values()) == len(labels)
    r = erase("status", "--store", str(text_store))
    assert r.returncode == 0
    first = m["examples"][0]
    assert f"  {first['cluster']}: {first['id']} -> {first['target']} | text marker TXT" in r.stdout
    assert sum(line.startswith("route ") for line in r.stdout.splitlines()) == len(m["routes"])
    assert "labels: " in r.stdout
    r = erase("status", "--store", str(text_store), "--json", "--redact-ids")
    fit = json.loads(r.stdout)["fit"]
    assert all(e["input_start"] is None and e["id"].startswith("h:") for e in fit["examples"])
    assert all(i.startswith("h:") for route in fit["routes"] for i in route["ids"])
