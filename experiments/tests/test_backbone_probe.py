"""experiments/backbone_probe.py: the linear probe of a backbone's pooled features (its pieces)."""

import torch

from experiments import backbone_probe as probe_module


def test_probe_separates_separable_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    informative = torch.nn.functional.one_hot(y, 3).float() * 3 + 0.3 * torch.randn(300, 3, generator=g)
    noise = torch.randn(300, 3, generator=g)
    train, test = slice(0, 200), slice(200, 300)
    good = probe_module.probe(informative[train], y[train], informative[test], 3)
    bad = probe_module.probe(noise[train], y[train], noise[test], 3)
    assert (good == y[test]).float().mean() > 0.95
    assert (bad == y[test]).float().mean() < 0.6


def test_probe_runs_on_the_embedded_benchmark_with_a_random_backbone(tmp_path, capsys):
    from ofa_synth.writer import main as synth_main

    assert synth_main([str(tmp_path), "--num-images", "30", "--image-size", "64", "--seed", "1"]) == 0
    x, labels = probe_module.load_split(str(tmp_path), "train", 64)
    assert x.shape[1:] == (3, 64, 64) and len(labels) == len(x) > 0
    assert probe_module.main(["--data", str(tmp_path), "random"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split()
    assert row[0] == "random" and all(0.0 <= float(v) <= 1.0 for v in row[1:4])
