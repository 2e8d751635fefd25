"""Mining: what the device keeps of its own mistakes, and why.

- :mod:`~feederd.mining.decisions`: pure decisions per frame and visit (reasons, priority,
  pseudo-labels), on the task's decision (:mod:`feederd.task`) weighed against evidence the
  model did not produce, testable without a camera or a disk;
- :mod:`~feederd.mining.evidence`: the visit's empty-feeder reference (does a crop look like
  the feeder without a bird?);
- :mod:`~feederd.mining.collector`: the one interface between the visit stream, owner replies
  and the spool (runs on the events thread, never in the frame loop);
- :mod:`~feederd.mining.recent`: recent visits' crops kept (bounded) so a late reply can still
  label them;
- :mod:`~feederd.mining.imagehash`: perceptual hashes for near-duplicate checks.
"""
