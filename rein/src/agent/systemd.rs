//! The agent's side of systemd's service protocol (`Type=notify`): readiness, a status line,
//! the watchdog, and stopping. Outside systemd (`NOTIFY_SOCKET` unset) every call does nothing.
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

pub struct Systemd {
    /// How often to tell the watchdog the agent is alive: half its timeout, as systemd
    /// advises, or never when no watchdog is set.
    watchdog_every: Option<Duration>,
    last_ping: Instant,
}

impl Systemd {
    pub fn from_env() -> Self {
        Self {
            watchdog_every: sd_notify::watchdog_enabled().map(|timeout| timeout / 2),
            last_ping: Instant::now(),
        }
    }

    /// The longest the agent may wait for an event before it must ping the watchdog.
    pub fn longest_wait(&self, tick: Duration) -> Duration {
        self.watchdog_every.map_or(tick, |every| every.min(tick))
    }

    /// Ready to serve: the first reconciliation is done (well or not: the reason is in the
    /// status line and the log).
    pub fn ready(&self, status: &str) {
        notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn status(&self, status: &str) {
        notify(&[NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        notify(&[NotifyState::Reloading]);
    }

    /// Pings the watchdog if it is due. Called from the main loop, so a loop that hangs
    /// (a reconciliation stuck on the kernel) gets the agent restarted.
    pub fn keep_alive(&mut self) {
        if let Some(every) = self.watchdog_every
            && self.last_ping.elapsed() >= every
        {
            notify(&[NotifyState::Watchdog]);
            self.last_ping = Instant::now();
        }
    }

    pub fn stopping(&self) {
        notify(&[NotifyState::Stopping]);
    }
}

fn notify(states: &[NotifyState]) {
    // systemd going away must not take the agent down with it; the limits are in the kernel.
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!("cannot notify systemd: {e}");
    }
}
