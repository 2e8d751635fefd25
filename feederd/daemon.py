"""The composition root: builds every stage, runs the frame loop, tears down in mirror order.

Stages know nothing of each other; this module is the only place that wires camera, motion,
classifier, visits, mining, spool, MQTT and jobs together (after Frigate's ``app.py``, with the
frame loop kept to a few calls).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from feederd import __version__
from feederd.assets import default_model_path, demo_clip_path, is_demo_model
from feederd.capture import describe_source, is_demo_source, open_source
from feederd.capture.base import FrameSource
from feederd.classifier import Classifier
from feederd.config import Settings, load_settings, writable_dir
from feederd.errors import FeederError
from feederd.events import EventQueue, JsonLinesSink, LinkEvents
from feederd.health import HEALTH_FILE, HealthFile
from feederd.jobs import Jobs
from feederd.logsetup import setup_logging
from feederd.mining.collector import Collector
from feederd.mining.recent import RecentVisits
from feederd.modelchain import Choice, load_model, real_frames
from feederd.modelstore import ModelStore, store_for
from feederd.motion import MotionDetector, VisitStateMachine
from feederd.notify import SystemdNotifier
from feederd.pipeline import Pipeline
from feederd.spool import Spool
from feederd.visits import VisitTracker

logger = logging.getLogger(__name__)

# Fault injection for the watchdog test: after this many frames the loop hangs, as a stuck
# camera driver would, so the test can see systemd's watchdog pings stop.
_STALL_AFTER = int(os.environ.get("FEEDERD_FAULT_STALL_AFTER_FRAMES", "0"))
MODEL_FAULT_LIMIT = 3  # frames with non-finite outputs before the model is rolled back


def model_store_for(settings: Settings) -> ModelStore:
    return store_for(settings)


def resolve_model_path(settings: Settings) -> Path:
    """The configured bundle, else the installed ``current`` one, else the bundled AIY Birds V1
    model (``feederd demo`` configures the cartoon demo model explicitly); the daemon falls
    back further when one is damaged (feederd.modelchain)."""
    if settings.classifier.model:
        return Path(settings.classifier.model).expanduser()
    current = model_store_for(settings).current_path()
    return current if current is not None else default_model_path()


def _copy_fields(source: Any, target: Any) -> None:
    for name in type(source).model_fields:
        setattr(target, name, getattr(source, name))


class Daemon:
    """Owns every stage; ``run()`` returns the process exit code."""

    def __init__(self, settings: Settings, *, alert_stream: IO[str] | None = None,
                 visits_to_stream: bool = False, config_path: Path | None = None,
                 alert_sink: Any = None) -> None:
        self.settings = settings
        self._alert_sink = alert_sink  # the demo's own JsonLinesSink, instead of alert_stream
        # The demo clip and model are news only where nobody asked for them (not `demo`).
        demo = alert_sink is not None or alert_stream is not None
        self._demo_level = logging.INFO if demo else logging.WARNING
        self._alert_stream = alert_stream
        self._visits_to_stream = visits_to_stream
        self._config_path = config_path
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._notifier = SystemdNotifier()
        self._mqtt: Any = None
        self._jobs: Jobs | None = None
        self._source: FrameSource | None = None
        self._spool: Spool | None = None
        self._alert_problem: str | None = None
        self._faulty: set[Path] = set()  # models that gave non-finite outputs at run time
        self._fault_handled: Classifier | None = None
        self.started = time.monotonic()

    # --- construction, in dependency order ---------------------------------------------------

    def _init_classifier(self) -> None:
        self._choice = load_model(self.settings, load=self._load_classifier)
        self.classifier = self._choice.classifier
        self._model_target = model_store_for(self.settings).current_target()
        logger.info("model %s (%d labels) from %s", self.classifier.bundle.version,
                    len(self.classifier.bundle.labels), self.classifier.path)
        if is_demo_model(self.classifier.path):
            logger.log(self._demo_level, "model: the bundled demo model knows cartoon birds "
                       "only, not real ones; install a real model (`feederd model install "
                       "FILE`) or set classifier.model")

    def _load_classifier(self, path: Path) -> Classifier:
        visits = self.settings.visits
        return Classifier(path, self.settings.classifier.threads, species=visits.species,
                          exclude_species=visits.exclude_species)

    def _init_storage(self) -> None:
        s = self.settings
        s.state_dir.mkdir(parents=True, exist_ok=True)
        self._health = HealthFile(s.state_dir / HEALTH_FILE)
        model_store_for(s).remove_stale()  # what a kill -9 during 'model install' left
        self._spool = Spool(s.spool_dir, s.spool, dedup_distance=s.mining.dedup_distance)
        self._recent = RecentVisits(s.mining.recent_max_bytes, s.mining.recent_max_age_s,
                                    s.mining.jpeg_quality)
        self.collector = Collector(s.mining, self._recent, self._spool, self.classifier.bundle)

    def _init_mqtt(self) -> None:
        if not self.settings.mqtt.enabled:
            return
        from feederd.mqtt import MqttLink

        s = self.settings
        self._mqtt = MqttLink(s.mqtt, s.homeassistant, s.mqtt_password(),
                              s.state_dir / "outbox.db", self.collector, sw_version=__version__,
                              labels=self.classifier.bundle.labels, commands=self,
                              stats_interval_s=s.jobs.stats_interval_s)
        self._mqtt.set_species(self._species())

    def _init_events(self) -> None:
        handlers: list[Any] = [self.collector]
        first: list[LinkEvents] = []
        if self._alert_sink is not None:
            handlers.append(self._alert_sink)
        elif self._alert_stream is not None:
            handlers.append(JsonLinesSink(self._alert_stream, self._visits_to_stream))
        if self._mqtt is not None:
            m = self.settings.mqtt
            first.append(LinkEvents(self._mqtt, m.snapshot_width, m.snapshot_quality))
            handlers.extend(first)
        # A replay as fast as possible has no live camera to keep up with: lose nothing.
        self.events = EventQueue(handlers, lossless=not self.settings.camera.realtime,
                                 first=first)

    def _init_pipeline(self) -> None:
        s = self.settings
        bundle = self.classifier.bundle
        tracker = VisitTracker(s.visits, bundle.labels, bundle.negative_labels)
        self.pipeline = Pipeline(MotionDetector(s.motion), VisitStateMachine(s.motion), tracker,
                                 self.classifier, self.events, s.classifier)

    def _init_source(self) -> None:
        demo = demo_clip_path() if self.settings.camera.source == "demo" else None
        self._source = open_source(self.settings.camera, self.settings.motion.height, demo)
        if is_demo_source(self.settings.camera):
            logger.log(self._demo_level, "camera: replaying %s; set [camera] source (and "
                       "kind) for a real camera", describe_source(self.settings.camera))
        else:
            logger.info("camera: %s", describe_source(self.settings.camera))

    def _init_jobs(self) -> None:
        self._jobs = Jobs(self.settings.jobs, self)

    def _start(self) -> None:
        assert self._spool is not None and self._jobs is not None
        self._spool.start()
        self.events.start()
        if self._mqtt is not None:
            self._mqtt.start()
            self._mqtt.publish_model(self._choice.describe())
        self._jobs.start()
        self.write_health()

    # --- running ------------------------------------------------------------------------------

    def run(self) -> int:
        """Build, start, loop until the source ends or a signal arrives, then stop cleanly."""
        writable_dir(self.settings.state_dir, "state_dir")
        writable_dir(self.settings.spool_dir, "spool.dir" if self.settings.spool.dir
                     else "state_dir")
        self._init_classifier()
        self._init_storage()
        self._init_mqtt()
        self._init_events()
        self._init_pipeline()
        try:
            self._init_source()
            self._init_jobs()
            self._install_signals()
            self._start()
            self._notifier.ready(f"classifying with {self.classifier.bundle.version}")
            self._loop()
        finally:
            self.stop()
        return 0

    def _loop(self) -> None:
        source = self._source
        assert source is not None
        while not self._stop.is_set():
            frame = source.read()
            self._notifier.watchdog(self._alerts_can_leave)
            if self._reload.is_set():
                self._do_reload()
            if frame is None:
                if source.finished:
                    break
                self._stop.wait(0.02)
                continue
            self.pipeline.process(frame)
            if self.pipeline.faults >= MODEL_FAULT_LIMIT and \
                    self.pipeline.classifier is not self._fault_handled:
                self._on_model_fault()
            if _STALL_AFTER and self.pipeline.counters.frames >= _STALL_AFTER:
                threading.Event().wait()
        self.pipeline.close_visit(time.time())

    def _alerts_can_leave(self) -> bool:
        """Asked when a watchdog ping is due: a dead or stuck MQTT sender withholds it."""
        problem = self._mqtt.sender_problem() if self._mqtt is not None else None
        if problem != self._alert_problem:
            self._alert_problem = problem
            if problem:
                logger.error("%s; no longer feeding the systemd watchdog, so that systemd "
                             "restarts feederd", problem)
            else:
                logger.warning("MQTT alerts leave again; feeding the systemd watchdog")
        return problem is None

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        """The "reload model" command (MQTT): handled like SIGHUP, between frames."""
        self._reload.set()

    def _species(self) -> list[tuple[str, str]]:
        """(label, display name) of the labels that can alert, for Home Assistant."""
        bundle = self.classifier.bundle
        return [(label, bundle.display_name(label)) for label in self.classifier.task.species]

    def stop(self) -> None:
        """Mirror of start: finish the visit, flush events, spool and outbox, say offline."""
        self._notifier.stopping()
        if self._jobs is not None:
            self._jobs.stop()
        if self._source is not None:
            self._source.close()
        if hasattr(self, "events"):
            self.events.stop()
        if self._spool is not None:
            self._spool.close()
        if self._mqtt is not None:
            self._mqtt.stop()
        logger.info("stopped after %d frames, %d visits, %d alerts",
                    *self._counts("frames", "visits", "alerts"))

    def _counts(self, *names: str) -> list[int]:
        counters = getattr(getattr(self, "pipeline", None), "counters", None)
        return [getattr(counters, n, 0) for n in names]

    # --- signals and reloads ------------------------------------------------------------------

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGHUP, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._reload.set()
        else:
            logger.info("signal %s: finishing the current visit and stopping",
                        signal.Signals(signum).name)
            self._stop.set()

    def _do_reload(self) -> None:
        """SIGHUP: re-read the config (same file) and the model; the MQTT session stays."""
        self._reload.clear()
        self._notifier.reloading()
        try:
            fresh = load_settings(self._config_path)
            # Update the section objects in place: the stages hold references to them.
            for section in ("logging", "visits", "mining"):
                _copy_fields(getattr(fresh, section), getattr(self.settings, section))
            setup_logging(self.settings.logging)
            self.check_model(force=True)
        except Exception:
            logger.exception("reload failed; keeping the running configuration and model")
        self._notifier.ready("reloaded")

    def check_model(self, force: bool = False) -> bool:
        """Load the installed model if ``current`` changed; the running model keeps serving
        until the new one has loaded and passed validation."""
        target = model_store_for(self.settings).current_target()
        if not force and target == self._model_target:
            return False
        self._model_target = target
        path = resolve_model_path(self.settings)
        try:
            new = self._load_classifier(path)
            new.check_on(real_frames(self.settings))
        except Exception:
            logger.exception("new model %s refused; the current model keeps serving", path)
            return False
        self._adopt(Choice(new, "configured" if self.settings.classifier.model else "current"))
        return True

    def _adopt(self, choice: Choice) -> None:
        self._choice, self.classifier = choice, choice.classifier
        self.pipeline.swap_classifier(choice.classifier)
        self.collector.set_bundle(choice.classifier.bundle)
        if self._mqtt is not None:
            self._mqtt.set_labels(choice.classifier.bundle.labels)
            self._mqtt.set_species(self._species())
            self._mqtt.publish_model(choice.describe())

    def _on_model_fault(self) -> None:
        """Non-finite outputs on real frames: roll ``current`` back and serve the next good
        model (feederd.modelchain); the faulty one is never loaded again by this process."""
        bad = self.pipeline.classifier
        self._fault_handled = bad
        self._faulty.add(bad.path)
        logger.error("model %s gave non-finite outputs on %d frames: a model fault; rolling "
                     "back", bad.bundle.version, self.pipeline.faults)
        store = model_store_for(self.settings)
        if self._choice.source == "current" and store.previous_path() is not None:
            try:
                store.rollback()
                self._model_target = store.current_target()
            except (FeederError, OSError):
                logger.exception("rollback failed; falling back without it")
        try:
            self._adopt(load_model(self.settings, skip=self._faulty,
                                   load=self._load_classifier))
        except FeederError as exc:
            logger.error("no model to fall back to (%s); faulty frames keep being skipped", exc)

    # --- figures for stats --------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        counters = vars(self.pipeline.counters).copy()
        uptime = time.monotonic() - self.started
        counters.update(uptime_s=round(uptime, 1), fps=round(counters["frames"] / uptime, 2),
                        events_dropped=self.events.dropped,
                        model_version=self.classifier.bundle.version)
        counters.update(self.collector.stats())
        counters["alerts_blocked"] = self._alert_problem or ""
        return counters

    def write_health(self) -> None:
        """What ``feederd doctor`` reads (feederd.health); written only when it changes."""
        self._health.update({"started": round(time.time() - (time.monotonic() - self.started)),
                             "alerts_blocked": self._alert_problem or "",
                             "model": self.classifier.bundle.version,
                             "model_fallback": self._choice.fallback})

    @property
    def mqtt(self) -> Any:
        return self._mqtt

    @property
    def spool(self) -> Spool | None:
        return self._spool

    @property
    def recent(self) -> RecentVisits:
        return self._recent
