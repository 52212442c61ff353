import numpy as np

from fedsub.engines.setup import peak_rss_mb, reset_peak_rss


def test_peak_memory_window_resets_so_each_method_reports_its_own_peak():
    reset_peak_rss()
    block = np.ones(50_000_000)  # 400 MB
    block[::4096] = 2.0
    after_alloc = peak_rss_mb()
    del block
    reset_peak_rss()
    assert after_alloc - peak_rss_mb() > 300
