"""Steps replayed from a recording (a CUDA graph on a GPU; an FX trace, which fixes every Python
value at recording as a capture does, anywhere) train exactly as eager steps: what changes
between steps is read from tensors, and the recording stays valid across epochs, the short last
batch, a mid-epoch stop and the resume."""
import pytest
import torch

from kd import graphs, sealed, train
from kd.config import make_config
from kd_fixtures import teacher_dir, tiny  # noqa: F401 - session fixtures
from test_pack import assert_same, stop_after

MODES = [pytest.param("trace", "cpu", 0.0, id="fx-trace-cpu"),
         pytest.param("1", "cuda", 2e-5, id="cuda-graph", marks=pytest.mark.skipif(
             not torch.cuda.is_available(), reason="no CUDA device here: run it where one is"))]


def jobs(teacher):
    """A CNN alone (autograd, dropout), a pack of two CNN students of two seeds (a functional
    call each, on streams of their own on CUDA; a batch order each), a pack of three KD MLP students
    of one seed (written-out backward, cached teacher logits, one batch shared as a view); 300
    images in batches of 40: 7 full steps and a short one an epoch."""
    common = {"epochs": 2, "batch_size": 40, "drop_last": False}
    return {
        "cnn": [make_config(method="teacher", **common)],
        "cnn-pack": [make_config(method="scratch", model="mnist-cnn", seed=s, **common) for s in (0, 1)],
        "mlp-pack": [make_config(method="kd", alpha=a, temperature=t, teacher=str(teacher), seed=s, **common)
                     for a, t, s in ((0.5, 4.0, 0), (0.9, 8.0, 0), (0.1, 2.0, 0))],
    }


@pytest.mark.parametrize("mode,device,atol", MODES)
@pytest.mark.parametrize("kind", ["cnn", "cnn-pack", "mlp-pack"])
def test_replayed_steps_train_as_eager_steps(tmp_path, tiny, teacher_dir, monkeypatch, mode, device, atol, kind):
    configs = jobs(teacher_dir)[kind]
    eager = [tmp_path / f"eager{i}" for i in range(len(configs))]
    replayed = [tmp_path / f"replayed{i}" for i in range(len(configs))]
    monkeypatch.setenv(graphs.ENV, "0")
    train.run_pack(configs, eager, dataset=tiny, device=device)
    monkeypatch.setenv(graphs.ENV, mode)
    before = graphs.REPLAYS["count"]
    train.run_pack(configs, replayed, dataset=tiny, device=device)
    assert graphs.REPLAYS["count"] - before == 2 * 7 - graphs.WARMUP - (mode == "trace")  # tracing runs a step
    for a, b in zip(eager, replayed):
        assert_same(a, b, atol=atol)


@pytest.fixture(autouse=True)
def deterministic_cudnn(monkeypatch):
    """Graph against eager, not cuDNN's nondeterministic algorithms against themselves."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)


@pytest.mark.parametrize("mode,device,atol", MODES)
@pytest.mark.parametrize("cut_eagerly", [False, True], ids=["cut-replayed", "cut-eagerly"])
def test_replayed_steps_stop_mid_epoch_and_resume_to_the_eager_result(tmp_path, tiny, teacher_dir, monkeypatch,
                                                                       mode, device, atol, cut_eagerly):
    """Stopped mid-epoch, replayed or eagerly (a checkpoint of an optimiser that was not capturable),
    and resumed replayed: the uninterrupted eager result."""
    configs = jobs(teacher_dir)["mlp-pack"]
    whole = [tmp_path / f"whole{i}" for i in range(3)]
    cut = [tmp_path / f"cut{i}" for i in range(3)]
    monkeypatch.setenv(graphs.ENV, "0")
    train.run_pack(configs, whole, dataset=tiny, device=device)
    monkeypatch.setenv(graphs.ENV, "0" if cut_eagerly else mode)
    assert train.run_pack(configs, cut, dataset=tiny, device=device, stop=stop_after(10)) == [None] * 3
    monkeypatch.setenv(graphs.ENV, mode)
    assert sealed.load(cut[0] / "checkpoint.pt")["step"] == 2  # 8 steps an epoch: stopped 2 into the second
    before = graphs.REPLAYS["count"]
    train.run_pack(configs, cut, dataset=tiny, device=device)  # a new recording, from step 2 on
    assert graphs.REPLAYS["count"] > before
    for a, b in zip(whole, cut):
        assert_same(a, b, atol=atol)


def test_one_recording_after_the_warm_up_replayed_and_short_batches_run_eagerly(monkeypatch):
    total, calls = torch.zeros((), dtype=torch.int64), []

    def fn(b):
        calls.append(b)  # Python runs: a warm-up, the recording, an eager step; not a replay
        total.add_(b)

    step = graphs.Step(fn, batch=40, mode="trace")
    for b in (40, 40, 40, 40, 40, 40, 20):
        step(b)
    assert total.item() == 6 * 40 + 20  # every step ran once
    assert calls == [40] * (graphs.WARMUP + 1) + [20]
    monkeypatch.setenv(graphs.ENV, "1")
    assert graphs.mode(torch.device("cpu")) is None  # CUDA graphs need CUDA: eager elsewhere
    monkeypatch.setenv(graphs.ENV, "trace")
    assert graphs.mode(torch.device("cpu")) == "trace"


@pytest.mark.parametrize("mode,device,atol", MODES)
def test_a_step_that_cannot_be_recorded_fails_with_the_way_to_step_eagerly(mode, device, atol):
    """A step that reads a value back to the host runs eagerly but cannot be recorded (CUDA refuses
    the sync in a capture; the trace stands in for that here by refusing the read while it records):
    one line that says how to run without replays."""
    from torch.fx.experimental.proxy_tensor import get_proxy_mode

    from kd.errors import UserError

    total = torch.zeros((), device=device)

    def fn(b: int) -> None:
        total.add_(b)
        if device == "cpu" and get_proxy_mode() is not None:
            raise RuntimeError("operation not permitted when stream is capturing")
        total.item()  # a host read

    step = graphs.Step(fn, batch=8, mode="cuda" if device == "cuda" else "trace")
    for _ in range(graphs.WARMUP):
        step(8)
    with pytest.raises(UserError, match="the training step could not be recorded as a (CUDA graph|trace) "
                                        r"\((RuntimeError|AcceleratorError)") as e:
        step(8)
    assert str(e.value).endswith("; KDSWEEP_CUDA_GRAPHS=0 steps eagerly: resume with it set")  # status shows this line
    if device == "cuda":  # the process goes on (a long-lived worker runs its next unit): on its own stream
        assert torch.cuda.current_stream() == torch.cuda.default_stream()
        assert (torch.ones(3, device=device) * 2).sum().item() == 6.0
