"""Hardware-aware precision (``objective="performance"``): candidate regions, the timer
protocol, the decision, the measurement cache and portable profiles. Framework-free: the
timers live in mixprec/runtimes/<framework>_timing.py."""
from mixprec.profiling.cache import Profile, TimingCache, cache_root
from mixprec.profiling.regions import Region, extract, low_components
from mixprec.profiling.session import (OBJECTIVES, ProfileSession, RegionRecord, annotate, begin, current,
                                       exhaustive,                                        extend_pipeline, finish, profile_model, scope)
from mixprec.profiling.timing import Measurement, RegionTimer, TimingPolicy, TimingUnavailable, measure_pair

__all__ = ["OBJECTIVES", "Measurement", "Profile", "ProfileSession", "Region", "RegionRecord", "RegionTimer",
           "TimingCache", "TimingPolicy", "TimingUnavailable", "annotate", "begin", "cache_root", "current",
           "exhaustive", "extend_pipeline", "extract", "finish", "low_components", "measure_pair", "profile_model", "scope"]
