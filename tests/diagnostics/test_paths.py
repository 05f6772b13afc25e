"""Path agreement: the FFT path matches the chunked path on trained weights, and the check
fails when the FFT is too short (its convolution wraps around)."""

from wavefield.diagnostics import path_agreement


def test_paths_agree_on_trained_weights(trained_run, sample_ids):
    _, model, _ = trained_run
    check = path_agreement(model, sample_ids)
    assert check["passed"] and check["max_gap"] <= 1e-5
    assert [r["layer"] for r in check["layers"]] == [0, 1]
    assert check["layers"][0]["gap"] > 0  # the outer layer's two paths (quadratic, chunked) are different sums, not one op twice
    assert path_agreement(model)["passed"]  # on random deposits, without a sample


def test_the_check_fails_on_an_fft_too_short(trained_run, sample_ids):
    """At FFT length N instead of >= 2N - 1 the convolution is circular: energy is conserved all
    the same, but the outputs are wrong, and the check says so."""
    _, model, _ = trained_run
    N = len(sample_ids)
    assert path_agreement(model, sample_ids, fft_size=2 * N - 1)["passed"]  # the shortest exact length
    check = path_agreement(model, sample_ids, fft_size=N)
    assert not check["passed"] and check["max_gap"] > 100 * check["tolerance"]
    assert not path_agreement(model, fft_size=512)["passed"]  # the random sample is 512 tokens long
