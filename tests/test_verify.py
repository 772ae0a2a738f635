"""`ltsei synth-recording`, `ltsei enroll` and `ltsei verify` end to end with the real code (the real loader, detector,
templates and sequential test; no stand-in runner): a tiny spoofing scenario and a smoke-size network (untrained and
seeded, saved as a run folder the way stage 1 saves it, so that the test needs seconds, not a training)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from ltsei.core.cache import atomic_save
from ltsei.cli import main
from ltsei.experiments.config import compose_config
from ltsei.learn.models import create_model
from ltsei.experiments.run import stage1_payload

RAW = ("--format", "cs16", "--sample-rate", "8e6")    # the scenario's samples read as raw I/Q (importing sigmf takes seconds)


def _run_folder(folder: Path, seed: int) -> Path:
    "A smoke-profile ConvNetADSB (6 classes, 384 samples at 8 MS/s) saved as a run folder: config.yaml, checkpoints/stage1_best.pt."
    cfg = compose_config(["profile=smoke", "stage2.enabled=false"])
    torch.manual_seed(seed)
    m = create_model(cfg.model.name, 6, 384, cfg.model)
    (folder / "checkpoints").mkdir(parents=True)
    atomic_save(stage1_payload(m, cfg, m.state_dict(), 0, {"balanced_acc": 0.0}, 6, 384, f"test{seed}"),
                folder / "checkpoints" / "stage1_best.pt")
    OmegaConf.save(cfg, folder / "config.yaml")
    return folder


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    """The scenario (4 aircraft, 2 impersonators, 1 replayer, 1 ghost), a run, a gallery enrolled from it and a verification
    with the truth of every frame by the network (`--frames every`: the spoofers transmit from their victims' first
    frames on, so the network's scores decide; the screen has a test of its own below)."""
    d = tmp_path_factory.mktemp("verify")
    run = _run_folder(d / "run", 0)
    assert main(["synth-recording", "--out", str(d / "scen"), "--preset", "smoke", "--aircraft", "4", "--imbalance-ratio", "1",
                 "--head-replies", "30", "--test-replies", "12", "--impersonators", "2", "--replayers", "1", "--ghosts", "1",
                 "--spoofer-replies", "12", "--replies-per-s", "2000"]) == 0
    assert main(["enroll", str(d / "scen" / "enroll.cs16"), *RAW, "--model", str(run), "--out", str(d / "gal")]) == 0
    assert main(["verify", str(d / "scen" / "test.cs16"), *RAW, "--gallery", str(d / "gal"),
                 "--out", str(d / "ver"), "--truth", str(d / "scen" / "truth.csv"), "--budget", "6", "--frames", "every"]) == 0
    return d


def test_no_impersonator_is_let_through(scenario):
    s = json.loads((scenario / "ver" / "summary.json").read_text())
    tr = s["evaluation"]["track"]["all"]
    assert tr["impostor"] >= 6 and tr["genuine"] >= 6
    assert tr["detection"] == 1.0, f"a spoofer's track was called genuine: {tr}"      # every impersonator / replayer caught
    v = pd.read_csv(scenario / "ver" / "verdicts.csv", dtype={"icao": str})
    truth = pd.read_csv(scenario / "scen" / "truth.csv", dtype={"icao": str})
    assert 0.9 * (truth.recording == "test").sum() <= len(v) <= (truth.recording == "test").sum()   # found once (a few fail CRC)
    assert s["evaluation"]["ghosts"]["not_enrolled"] == 1.0                              # a ghost's address is in no gallery
    fr = s["evaluation"]["frame"]["all"]
    # per frame, at the 1 % calibration of 30 enrollment frames per aircraft (an untrained network): the thresholds
    # hold the genuine frames' false alarm near the asked rate (1 of 45; 3 of 45 before the prediction bound) and still
    # catch most spoofed frames; the threshold-free EER says the scores themselves separate them
    assert fr["false_alarm"] <= 0.05 and fr["detection"] >= 0.75 and fr["eer"] <= 0.15, fr


def test_outputs_and_truth(scenario):
    truth = pd.read_csv(scenario / "scen" / "truth.csv", dtype={"icao": str})
    assert set(truth.kind) == {"genuine", "impersonation", "replay", "ghost"}
    imp = truth[truth.kind != "ghost"]
    assert set(imp[imp.kind != "genuine"].icao) <= set(truth[truth.recording == "enroll"].icao)      # they claim enrolled aircraft
    assert set(truth[truth.kind == "replay"].msg) <= set(truth[truth.recording == "enroll"].msg)     # replays repeat captured messages
    spoofers = truth[truth.kind != "genuine"].transmitter
    assert not set(spoofers) & set(truth[truth.kind == "genuine"].transmitter)                       # each spoofer its own hardware
    for f in ("verdicts.csv", "tracks.csv", "summary.json", "summary.txt", "scores.png"): assert (scenario / "ver" / f).is_file()
    man = json.loads((scenario / "gal" / "manifest.json").read_text())
    assert man["length"] == 384 and man["sample_rate"] == 8e6 and len(man["addresses"]) == 4 and man["sources"][0]["sha256"]
    assert "/" not in json.dumps({k: v for k, v in man.items() if k != "llr"}).replace("MS/s", "")  # no machine path in the gallery
    tracks = pd.read_csv(scenario / "ver" / "tracks.csv")
    assert set(tracks.verdict) <= {"match", "mismatch", "unknown transmitter", "not enrolled"}


def test_enroll_adds_frames(scenario, tmp_path):
    import shutil
    gal = tmp_path / "gal"
    shutil.copytree(scenario / "gal", gal)
    before = json.loads((gal / "manifest.json").read_text())["frames"]
    assert main(["enroll", str(scenario / "scen" / "enroll.cs16"), *RAW, "--model", str(scenario / "run"), "--out", str(gal)]) == 0
    assert json.loads((gal / "manifest.json").read_text())["frames"] == 2 * before


def test_bad_inputs_one_line(scenario, tmp_path, capsys):
    other = _run_folder(tmp_path / "other", 1)
    rc = main(["verify", str(scenario / "scen" / "test.cs16"), *RAW, "--gallery", str(scenario / "gal"),
               "--model", str(other), "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "model key" in err and "'other'" in err and "'run'" in err
    assert not (tmp_path / "v").exists()
    assert main(["verify", str(scenario / "scen" / "test.cs16"), *RAW, "--gallery", str(tmp_path), "--out", str(tmp_path / "v")]) == 2
    assert "not an ltsei gallery" in capsys.readouterr().err
    (tmp_path / "mine").mkdir(); (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["verify", str(scenario / "scen" / "test.cs16"), *RAW, "--gallery", str(scenario / "gal"),
                 "--out", str(tmp_path / "mine")]) == 2
    assert "does not write" in capsys.readouterr().err and (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert main(["synth-recording", "--out", str(tmp_path / "s"), "--aircraft", "1"]) == 2
    assert "--aircraft" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_recording_at_another_rate_is_resampled(scenario, tmp_path):
    "The test recording decimated by 2 (4 MS/s, as raw cs16): resampled to the network's 8 MS/s and said so."
    from ltsei.signals.frames import open_recording, raw_samples, to_iq, write_iq
    rec = open_recording(scenario / "scen" / "test.cs16", "cs16", 8e6)
    z = to_iq(raw_samples(rec), rec.fmt)
    write_iq(tmp_path / "half.cs16", 0.5 * (z[0::2][:len(z) // 2] + z[1::2][:len(z) // 2]), "cs16")
    assert main(["verify", str(tmp_path / "half.cs16"), "--format", "cs16", "--sample-rate", "4e6", "--gallery", str(scenario / "gal"),
                 "--out", str(tmp_path / "v")]) == 0
    assert "resampled from 4 to 8 MS/s" in (tmp_path / "v" / "summary.txt").read_text()


def test_enroll_from_an_ltsei_frames_folder(scenario, tmp_path):
    "The frames `ltsei frames` writes (4 us margin, 128 us windows) enroll the same aircraft and frames as the recording itself."
    assert main(["frames", str(scenario / "scen" / "enroll.cs16"), *RAW, "--out", str(tmp_path / "frames")]) == 0
    assert main(["enroll", str(tmp_path / "frames"), "--model", str(scenario / "run"), "--out", str(tmp_path / "gal")]) == 0
    a, b = (json.loads((p / "manifest.json").read_text()) for p in (tmp_path / "gal", scenario / "gal"))
    assert a["addresses"] == b["addresses"] and a["counts"] == b["counts"]
    e1, e2 = np.load(tmp_path / "gal" / "embeddings.npy"), np.load(scenario / "gal" / "embeddings.npy")
    cos = (e1 * e2).sum(1) / np.linalg.norm(e1, axis=1) / np.linalg.norm(e2, axis=1)
    assert np.median(cos) > 0.99                       # the same windows, cut at the same offset (to within a sample)



def test_screen_signatures_of_a_frames_folder_match_the_recordings(scenario, tmp_path):
    "`ltsei verify FOLDER` screens the frames of an `ltsei frames` folder by the same physical signature as the recording's."
    from ltsei.instrument.verify_cli import frames_of
    assert main(["frames", str(scenario / "scen" / "test.cs16"), *RAW, "--out", str(tmp_path / "frames")]) == 0
    got = {}
    for src, kw in ((tmp_path / "frames", {}), (scenario / "scen" / "test.cs16", {"fmt": "cs16", "sample_rate": 8e6})):
        rows = [(f.time_s.to_numpy(), sign()[0]) for f, _, sign in frames_of(src, kw.get("fmt", "u8"), kw.get("sample_rate"), 8e6, 384, {})]
        t, sig = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        got[src.name] = pd.DataFrame(sig, columns=["cfo", "level", "droop"]).assign(t=np.round(t, 5))
    j = got["frames"].merge(got["test.cs16"], on="t", suffixes=("_f", "_r"))
    assert len(j) >= 0.9 * len(got["test.cs16"])                       # the same replies
    assert np.median(np.abs(j.cfo_f - j.cfo_r)) < 5e3 and np.median(np.abs(j.level_f - j.level_r)) < 1.0
    assert main(["verify", str(tmp_path / "frames"), "--gallery", str(scenario / "gal"), "--out", str(tmp_path / "ver")]) == 0
    v = pd.read_csv(tmp_path / "ver" / "verdicts.csv")
    assert len(v) == len(got["frames"]) and not (v.verdict == "not checked").any()

def _late_impersonator(scenario, path) -> tuple[str, np.ndarray]:
    """A cs16 recording at 8 MS/s: an enrolled aircraft alone for 10 replies (its track established), then 12 more of
    its replies interleaved with 12 of an impersonator that claims its address from its own hardware (of the spare
    transmitters of the scenario's preset, the one whose carrier offset lies furthest from the aircraft's). Returns
    the address and the impersonator's reply times (s)."""
    from ltsei.instrument.scenario import ScenarioConfig, scenario_synth_config, transmit, at_snr, write_recording, LEAD_S
    from ltsei.signals.synth import make_fingerprints
    from ltsei.signals.adsb import make_df17
    scfg = scenario_synth_config(ScenarioConfig(aircraft=4, impersonators=2, replayers=1, ghosts=1, preset="smoke"))
    fps, rng = make_fingerprints(scfg), np.random.default_rng(5)
    spare = 4 + int(np.argmax(np.abs(fps.cfo_hz.to_numpy()[4:] - fps.cfo_hz[0])))
    ic = int(fps.icao[0])
    who = np.r_[np.zeros(10, int), np.tile([0, 1], 12)]                      # 0: the aircraft, 1: the impersonator
    z = np.zeros((len(who), int(scfg.length)), np.complex64)
    for k, e in ((0, 0), (1, spare)):
        z[who == k] = at_snr(transmit(scfg, fps.loc[e].to_dict(), make_df17(rng, int((who == k).sum()), icao=ic), rng), rng.uniform(25, 35, (who == k).sum()))
    starts = 4000 + np.arange(len(who)) * 8000 + rng.integers(0, 2000, len(who))     # 1 ms apart
    write_recording(path, starts, z, int(starts[-1] + 8000), "cs16", rng)
    return f"{ic:06X}", starts[who == 1] / 8e6 + LEAD_S


def _flags_the_impersonator(out: Path, icao: str, times: np.ndarray) -> tuple[bool, bool]:
    "Whether the verification in `out` flagged the impersonator: (its address's track, most of its frames) called mismatch / unknown transmitter."
    v = pd.read_csv(out / "verdicts.csv", dtype={"icao": str})
    mine = v[(v.icao == icao) & (np.abs(v.time_s.to_numpy()[:, None] - times[None, :]).min(1) < 5e-6)]
    assert len(mine) >= 10                                                       # the impersonator's frames were found
    bad = ("mismatch", "unknown transmitter")
    track = pd.read_csv(out / "tracks.csv", dtype={"icao": str}).set_index("icao").verdict[icao]
    return track in bad, mine.verdict.isin(bad).mean() >= 0.5


def test_screen_flags_an_impersonator_that_joins_an_established_track(scenario, tmp_path, monkeypatch):
    """The default `--frames screen` catches a spoofer that starts after the track's first --budget frames; `--frames track`
    never looks. Chunks of 8 ms (the recording's 34 ms in five), so that the track's reference is set before the spoofer starts."""
    import ltsei.instrument.verify_cli as vc
    monkeypatch.setattr(vc, "VERIFY_CHUNK", 1 << 16)
    icao, times = _late_impersonator(scenario, tmp_path / "late.cs16")
    flagged = {}
    for mode in ("screen", "track"):
        assert main(["verify", str(tmp_path / "late.cs16"), *RAW, "--gallery", str(scenario / "gal"), "--out", str(tmp_path / mode),
                     "--budget", "6", "--frames", mode]) == 0
        flagged[mode] = _flags_the_impersonator(tmp_path / mode, icao, times)
    assert flagged == {"screen": (True, True), "track": (False, False)}, flagged
    v = pd.read_csv(tmp_path / "screen" / "verdicts.csv", dtype={"icao": str})
    assert v.verdict.notna().all() and not (v.verdict == "not checked").any()    # every frame has a verdict of its own
    assert (v.verdict == "consistent").any()                                      # ... and the screen spared the network some


def test_frames_track_embeds_only_what_the_tracks_need(scenario, tmp_path):
    assert main(["verify", str(scenario / "scen" / "test.cs16"), *RAW, "--gallery", str(scenario / "gal"), "--out", str(tmp_path / "v"),
                 "--frames", "track", "--budget", "4"]) == 0
    v = pd.read_csv(tmp_path / "v" / "verdicts.csv", dtype={"icao": str})
    checked = v[~v.verdict.isin(["not checked", "not enrolled"])]
    assert (v.verdict == "not checked").any() and checked.groupby("icao").size().max() <= 4   # one track per address here
    assert set(pd.read_csv(tmp_path / "v" / "tracks.csv").icao) == set(v.icao)


def _stand_in_rows(runs: Path, seed: int = 0) -> None:
    """The runs of the VERIFY_ROWS as complete stand-ins (a seeded smoke network, made-up metrics, the row's
    row.json): `ltsei reproduce --rows verify` finds them complete and trains nothing."""
    from ltsei.core.storage import atomic_write_json
    from ltsei.experiments.demo import fake_metrics
    from ltsei.experiments.layout import row_record, run_dir
    from ltsei.rows import ROWS_BY_ID, VERIFY_ROWS
    for k, rid in enumerate(VERIFY_ROWS.values()):
        row = ROWS_BY_ID[rid]
        run = _run_folder(run_dir(runs, "smoke", row, seed), k)
        atomic_write_json(run / "row.json", row_record(row, seed, "smoke"))
        atomic_write_json(run / "metrics.json", fake_metrics(row.run_args, seed))
        (run / "class_counts.json").write_text(json.dumps({"class_counts": [40, 30, 20, 10, 5, 3]}))


def test_verify_section_through_reproduce_at_the_smoke_profile(tmp_path, capsys, monkeypatch):
    """`ltsei reproduce --rows verify` on stand-in runs: one nbs/verify_row.ipynb executed by papermill per method (the
    real verification: enroll, verify, score), kept beside its verification without an error; the report's long form,
    paired table and DET figure; a second command skips every verification without a kernel. The section is narrowed
    to CE and cRT (`--rows verify` selects and verifies these two): two kernels and verifications less, same paths."""
    import nbformat
    import ltsei.rows
    from ltsei.orchestration.reproduce import reproduce_main
    from ltsei.instrument.verify_rows import plot_verify_det, section_results, verify_method, verify_section, verify_table
    monkeypatch.setattr(ltsei.rows, "VERIFY_ROWS", {"CE": "s1_1_ce", "cRT": "s3_1_crt"})
    _stand_in_rows(tmp_path)
    argv = ["--profile", "smoke", "--rows", "verify", "--runs-dir", str(tmp_path), "--no-report", "--jobs", "1"]
    assert reproduce_main(argv) == 0
    out = capsys.readouterr().out
    assert "2 runs; 2 complete (skipped), 0 to run" in out                          # the rows: nothing trained
    assert "[reproduce] verify: 2 verifications (nbs/verify_row.ipynb each); 0 complete (skipped), 2 to run" in out
    base, stamps = tmp_path / "smoke" / "verify", {}
    for m, rid in ltsei.rows.VERIFY_ROWS.items():
        folder = base / rid / "seed0"
        assert f"done   verify/{rid}/seed0" in out
        nb = nbformat.read(folder / "verify_row.ipynb", as_version=4)
        outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outs if o.output_type == "error"] and nb.metadata.papermill.end_time
        assert sum("image/png" in o.get("data", {}) for o in outs) == 2           # the score distributions, the DET curve
        assert any(f"{m} seed 0: track detection many" in o.get("text", "") for o in outs)
        assert outs[-1]["text"].startswith(f"[ltsei] files: {folder}")
        stamps[m] = [(folder / f).stat().st_mtime_ns for f in ("verify_row.ipynb", "verification/summary.json")]
    df = section_results(tmp_path, "smoke")                                          # what the report reads
    assert list(dict.fromkeys(df.method)) == ["CE", "cRT"] and set(df.level) == {"frame", "track"}
    t = verify_table(df)
    assert list(t.index) == ["CE", "cRT", "cRT − CE"] and "track few" in t.columns and "frame EER" in t.columns
    assert verify_section(tmp_path, "smoke", seeds=(0,), methods=("CE",)).equals(df[df.method == "CE"].reset_index(drop=True))
    plot_verify_det(tmp_path, "smoke", seeds=(0,), methods=("CE", "cRT"), path=tmp_path / "det.png")
    assert (tmp_path / "det.png").stat().st_size > 1000
    assert reproduce_main(argv) == 0                                                 # again: every verification skipped
    assert "[reproduce] verify: 2 verifications (nbs/verify_row.ipynb each); 2 complete (skipped), 0 to run" in capsys.readouterr().out
    for m, rid in ltsei.rows.VERIFY_ROWS.items():
        folder = base / rid / "seed0"
        assert [(folder / f).stat().st_mtime_ns for f in ("verify_row.ipynb", "verification/summary.json")] == stamps[m]
    assert reproduce_main(argv + ["--dry-run", "--seeds", "2"]) == 0               # the plan: done ones, and those after their rows
    out = capsys.readouterr().out
    assert f"complete verify/s1_1_ce/seed0         {base / 's1_1_ce' / 'seed0'}" in out
    assert "after    verify/s3_1_crt/seed1" in out and "<- after its row's run, s3_1_crt/seed1" in out
    import threading                                                                  # another process verifying it:
    from ltsei.core.storage import lock_beside                                       # wait for its lock, then find it complete
    from ltsei.orchestration.verify_runs import VerifyRun, run_verify_run
    held = lock_beside(base / "s1_1_ce" / "seed0")
    assert held.acquire(blocking=False)
    threading.Timer(0.3, held.release).start()
    v = run_verify_run(VerifyRun("CE", 0, base / "s1_1_ce" / "seed0"), "smoke", tmp_path)
    assert (v.status, v.error) == ("shared", None) and v.seconds >= 0.25
    with pytest.raises(FileNotFoundError, match="ltsei reproduce --profile smoke --rows x2_balpoe"):
        verify_method(tmp_path / "elsewhere", "smoke", "BalPoE", 0)


def test_reproduce_verifies_the_rows_the_launcher_ran_or_found_complete():
    "`ltsei reproduce --rows verify`: after the launcher, runs 'done', 'skipped' (complete before) and 'shared' are verified; failed ones are not."
    from types import SimpleNamespace as NS
    from ltsei.orchestration.reproduce import verify_pairs
    from ltsei.rows import ROWS_BY_ID, VERIFY_ROWS
    status = dict(zip(VERIFY_ROWS.values(), ("done", "skipped", "shared", "failed")))
    rrs = [NS(row=ROWS_BY_ID[r], seed=k, status=s) for r, s in status.items() for k in (0, 1)]
    assert verify_pairs(NS(demo=False, rows="verify", seeds=2, profile="smoke"), rrs) == \
        [("CE", 0), ("cRT", 0), ("MoE-LTSEI", 0), ("CE", 1), ("cRT", 1), ("MoE-LTSEI", 1)]
    assert verify_pairs(NS(demo=False, rows="s1_1_ce", seeds=1, profile="smoke"), rrs) == []
