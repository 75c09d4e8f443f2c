"""cetrt: ahead-of-time engines per layer block, streamed from storage to score HellaSwag.

Stages hand off through files (blocks.json, manifest.json); see cetrt.spec for the shared records.
Usage: `make engines` then `ce-run --engines engines/<model>`.
"""

__version__ = "0.1.0"
