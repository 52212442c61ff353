import mmap

from fedsub.engines.setup import peak_rss_mb, reset_peak_rss

PAGE = mmap.PAGESIZE


def test_peak_memory_window_resets_so_each_method_reports_its_own_peak():
    """400 MB of fresh anonymous pages (an mmap of its own: a malloc'd block may reuse pages the
    process already holds, which once left the peak unchanged in a full test run), touched page by
    page, then unmapped: the peak after the reset must have dropped by most of it."""
    reset_peak_rss()
    block = mmap.mmap(-1, 400 * 2**20)
    for offset in range(0, len(block), PAGE):
        block[offset] = 1
    after_alloc = peak_rss_mb()
    block.close()
    reset_peak_rss()
    assert after_alloc - peak_rss_mb() > 300
