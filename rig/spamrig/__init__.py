"""The test rig: what the tests and the benchmarks both drive the filter with.

- ``sink``: the next hop (a capturing SMTP sink; a scripted one that misbehaves)
- ``daemon``: the filter in this process or as a real ``spamfilter serve`` process
- ``clients``: smtplib helpers, raw SMTP sessions, concurrent load and loss accounting
- ``soak``: a long run through a real daemon process (RSS, fds, nothing lost)
- ``throughput``: msgs/s and latency through a filter over concurrent connections
- ``synthetic``: synthetic mail and tiny BERT model directories (no download)
- ``hostilemail``: pathological and generated hostile messages
- ``postfix``: a private Postfix instance in a temporary directory
- ``launch``: ``accelerate launch`` of training/train.py for the training tests
- ``crosscorpus``: mail the model never saw (crosscorpus-dev, the test split) for benchmarks

Everything runs on loopback (127.0.0.0/8) or unix sockets.
"""

from pathlib import Path

LOCALHOST = "127.0.0.1"
WAIT = 20.0  # seconds: the most any test waits for a server to start or stop
ROOT = Path(__file__).resolve().parents[2]  # the repository
