//! Delivering downloaded messages on a thread of their own, so the next message
//! streams in from the server while the previous one is written and fsynced. The queue
//! is bounded in messages and in bytes, so memory stays bounded whatever the sizes;
//! when it is full the download waits for it asynchronously (never blocking the
//! runtime thread, which the pass's other connections share).

use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::sync::{Arc, Mutex};

use std::thread::JoinHandle;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::headers::Headers;
use crate::maildir::Maildir;

use super::model::{Fingerprint, FolderId, Record};
use crate::flags::Flags;
use crate::headers;

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
    jobs: Option<tokio::sync::mpsc::Sender<(Job, OwnedSemaphorePermit)>>,
    /// The queue's byte budget, in KiB; a queued message holds its size's worth until
    /// it is written.
    budget: Arc<Semaphore>,
    budget_kib: u32,
    // In a Mutex only so a `&Writer` may cross an `.await` (Receiver is not Sync).
    results: Mutex<Receiver<std::io::Result<Delivered>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts a writer for one folder; at most `depth` messages and `bytes` bytes wait
    /// for it (a larger message waits alone).
    pub fn start(
        maildir: Maildir,
        folder: FolderId,
        uidvalidity: u32,
        depth: usize,
        bytes: usize,
    ) -> Writer {
        let (jobs, mut inbox) =
            tokio::sync::mpsc::channel::<(Job, OwnedSemaphorePermit)>(depth.max(1));
        let budget_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        let (done, results) = channel();
        let thread = std::thread::Builder::new()
            .name("mailsync-writer".into())
            .spawn(move || {
                // The permit is dropped once the message is written: its bytes leave
                // the budget.
                while let Some((job, _permit)) = inbox.blocking_recv() {
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
            budget: Arc::new(Semaphore::new(budget_kib as usize)),
            budget_kib,
            results: Mutex::new(results),
            thread,
        }
    }

    /// What a message takes of the byte budget: its size, at most all of it.
    fn kib(&self, job: &Job) -> u32 {
        u32::try_from(job.body.len().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.budget_kib)
    }

    /// Queues a message if there is room; gives it back if the queue is full.
    pub fn try_send(&self, job: Job) -> Queued {
        let Some(jobs) = &self.jobs else {
            return Queued::Stopped;
        };
        let permit = match self.budget.clone().try_acquire_many_owned(self.kib(&job)) {
            Ok(p) => p,
            Err(TryAcquireError::NoPermits) => return Queued::Full(job),
            Err(TryAcquireError::Closed) => return Queued::Stopped,
        };
        match jobs.try_send((job, permit)) {
            Ok(()) => Queued::Yes,
            Err(TrySendError::Full((job, _))) => Queued::Full(job),
            Err(TrySendError::Closed(_)) => Queued::Stopped,
        }
    }

    /// Queues a message, waiting while the queue is full. `false` if the writer
    /// stopped (a write failed: its error is among the results).
    pub async fn send(&self, job: Job) -> bool {
        let Some(jobs) = &self.jobs else {
            return false;
        };
        let Ok(permit) = self.budget.clone().acquire_many_owned(self.kib(&job)).await else {
            return false;
        };
        jobs.send((job, permit)).await.is_ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(maildir: &Maildir, uid: u32, size: usize) -> Job {
        let mut body = b"Subject: test\r\nMessage-ID: <m@example.org>\r\n\r\n".to_vec();
        body.resize(size, b'x');
        Job {
            uid,
            base: maildir.new_base(uid),
            flags: Flags::default(),
            internaldate: 0,
            body,
        }
    }

    #[tokio::test]
    async fn messages_larger_than_the_byte_budget_go_through_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(&dir.path().join("Inbox")).unwrap();
        // A budget of 4 KiB and messages of 10 KiB: each takes the whole budget.
        let writer = Writer::start(maildir.clone(), FolderId(1), 7, 64, 4096);
        for uid in 1..=5 {
            let sent = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                writer.send(job(&maildir, uid, 10_240)),
            )
            .await
            .expect("a message over the budget waited forever");
            assert!(sent);
        }
        let mut written: Vec<u32> = writer
            .finish()
            .into_iter()
            .map(|r| r.expect("written").0.uid)
            .collect();
        written.sort_unstable();
        assert_eq!(written, vec![1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn a_full_byte_budget_gives_the_message_back() {
        let dir = tempfile::tempdir().unwrap();
        let maildir = Maildir::open(&dir.path().join("Inbox")).unwrap();
        let writer = Writer::start(maildir.clone(), FolderId(1), 7, 64, 4096);
        // Hold the whole budget, as queued messages would.
        let held = writer.budget.clone().try_acquire_many_owned(4).unwrap();
        match writer.try_send(job(&maildir, 1, 100)) {
            Queued::Full(j) => assert_eq!(j.uid, 1),
            _ => panic!("queued beyond the byte budget"),
        }
        drop(held);
        assert!(matches!(
            writer.try_send(job(&maildir, 1, 100)),
            Queued::Yes
        ));
        let written = writer.finish();
        assert_eq!(written.len(), 1);
        assert!(written[0].is_ok());
    }
}
