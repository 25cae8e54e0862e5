//! Delivering downloaded messages on a thread of their own, so the next message
//! streams in from the server while the previous one is written and fsynced. The queue
//! is short (a few messages), so memory stays bounded by a few message sizes; when it
//! is full the download waits for it asynchronously (never blocking the runtime
//! thread, which the pass's other connections share).

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, TryRecvError, channel};

use std::thread::JoinHandle;
use tokio::sync::mpsc::error::TrySendError;

use crate::maildir::Maildir;
use crate::state::Headers;

use super::headers;
use super::model::{Fingerprint, Flags, FolderId, Record};

/// A message to deliver.
pub struct Job {
    pub uid: u32,
    pub base: String,
    pub flags: Flags,
    pub internaldate: i64,
    pub body: Vec<u8>,
}

/// A delivered message: its file is in `cur/` (the directory not yet fsynced).
pub type Delivered = (Record, Headers);

/// What [`Writer::try_send`] did with a message.
pub enum Queued {
    Yes,
    /// The queue is full: the message, to send with [`Writer::send`].
    Full(Job),
    /// The writer stopped (a write failed).
    Stopped,
}

pub struct Writer {
    jobs: Option<tokio::sync::mpsc::Sender<Job>>,
    // In a Mutex only so a `&Writer` may cross an `.await` (Receiver is not Sync).
    results: Mutex<Receiver<std::io::Result<Delivered>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts a writer for one folder; at most `depth` messages wait for it.
    pub fn start(maildir: Maildir, folder: FolderId, uidvalidity: u32, depth: usize) -> Writer {
        let (jobs, mut inbox) = tokio::sync::mpsc::channel::<Job>(depth.max(1));
        let (done, results) = channel();
        let thread = std::thread::Builder::new()
            .name("mailsync-writer".into())
            .spawn(move || {
                while let Some(job) = inbox.blocking_recv() {
                    let result = maildir.deliver(&job.base, job.flags, &job.body).map(|_| {
                        let (message_id, h) = headers::parse(&job.body);
                        let record = Record {
                            folder,
                            uidvalidity,
                            uid: job.uid,
                            base: job.base,
                            flags: job.flags,
                            fingerprint: Fingerprint {
                                message_id,
                                size: job.body.len() as u64,
                                internaldate: job.internaldate,
                            },
                        };
                        (record, h)
                    });
                    let failed = result.is_err();
                    if done.send(result).is_err() || failed {
                        return;
                    }
                }
            })
            .ok();
        Writer {
            jobs: thread.is_some().then_some(jobs),
            results: Mutex::new(results),
            thread,
        }
    }

    /// Queues a message if there is room; gives it back if the queue is full.
    pub fn try_send(&self, job: Job) -> Queued {
        match &self.jobs {
            Some(jobs) => match jobs.try_send(job) {
                Ok(()) => Queued::Yes,
                Err(TrySendError::Full(job)) => Queued::Full(job),
                Err(TrySendError::Closed(_)) => Queued::Stopped,
            },
            None => Queued::Stopped,
        }
    }

    /// Queues a message, waiting while the queue is full. `false` if the writer
    /// stopped (a write failed: its error is among the results).
    pub async fn send(&self, job: Job) -> bool {
        match &self.jobs {
            Some(jobs) => jobs.send(job).await.is_ok(),
            None => false,
        }
    }

    /// The messages written since the last call, without waiting.
    pub fn ready(&self) -> Vec<std::io::Result<Delivered>> {
        let mut out = Vec::new();
        let Ok(results) = self.results.lock() else {
            return out;
        };
        loop {
            match results.try_recv() {
                Ok(r) => out.push(r),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return out,
            }
        }
    }

    /// Waits for every queued message to be written; returns what was not yet
    /// collected with [`Writer::ready`].
    pub fn finish(mut self) -> Vec<std::io::Result<Delivered>> {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.ready()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
