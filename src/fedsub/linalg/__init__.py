from fedsub.linalg.ajive import AJIVEResult, ajive
from fedsub.linalg.moments import sync_second_moments

__all__ = ["AJIVEResult", "ajive", "sync_second_moments"]
