//! [`PolledStream`]: a glommio TCP stream whose reads learn of new data through one epoll set per
//! thread while the thread is busy, and through glommio's own io_uring poll only once it idles.
//!
//! # Why
//!
//! glommio arms an io_uring poll on a socket after every read that leaves the socket empty. When
//! data arrives, the kernel completes that poll by queueing task work on the thread that owns the
//! ring, and if that thread is running it is sent an inter-processor interrupt to run the work.
//! A busy server and a busy client on the same machine interrupt each other that way for nearly
//! every read: on a virtual machine each interrupt costs an exit to the hypervisor on both
//! sides. Profiles of a node under a pipelined read load put about a sixth of its CPU in the
//! sends that complete its clients' polls, and as much again in the client.
//!
//! An epoll set costs the sender next to nothing while nobody waits on it: the kernel only links
//! the socket into the set's ready list. So while the thread is busy, a [`Poller`] task asks the
//! set which sockets have data every [`BUSY_POLL_INTERVAL`], without blocking, and wakes their
//! readers. After [`QUIET_TURNS`] asks in a row find nothing, or once the thread ran less than
//! [`BUSY_SHARE_LEAVE`] of a [`SHARE_WINDOW`], the thread counts as idle: the poller stops
//! asking, and readers read through glommio, which wakes a sleeping thread without any interrupt
//! to spare: glommio arms its poll as soon as a read leaves the socket empty, so the next read
//! waits on that poll instead of asking the socket again (one `recv` per batch of data). A read
//! that comes in that way puts the poller back to work once the thread ran
//! [`BUSY_SHARE_ENTER`] of a window.
//!
//! ```text
//!  busy:  reader: recv ─EAGAIN─▶ waker in its slot ◀─wake─ poller: epoll_wait(0) every interval
//!  idle:  reader: glommio recv ─short─▶ glommio poll armed (io_uring) ─data─▶ reader ─▶ busy again?
//! ```
//!
//! A reader always reads the socket before it waits, or waits on a poll armed after its last
//! read (io_uring completes a poll at once when the socket already has data), and the poller
//! only runs between tasks, so data that arrives at any point is seen: by that read, by that
//! poll, or as an edge the next ask reports.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// How often a busy thread asks its epoll set which sockets have data.
pub const BUSY_POLL_INTERVAL: Duration = Duration::from_micros(20);
/// Asks in a row that find nothing before the thread counts as idle.
pub const QUIET_TURNS: u32 = 5;
/// The span over which the thread's share of a core is measured (see [`BUSY_SHARE_ENTER`]).
pub const SHARE_WINDOW: Duration = Duration::from_micros(500);
/// Readers move to the epoll set once the thread ran at least this share of a window's wall
/// time: asking pays only while a completion would find the thread running (and interrupt
/// it). A thread that mostly sleeps is woken by glommio's poll at no extra cost, and one that
/// shares its core with other busy threads would only spend its turns asking.
pub const BUSY_SHARE_ENTER: f64 = 0.7;
/// Readers move back to glommio's poll once the thread ran less than this share of a window.
pub const BUSY_SHARE_LEAVE: f64 = 0.5;
/// Events taken from the set per ask.
const EVENTS_PER_ASK: usize = 256;

/// A TCP stream read through its thread's [`Poller`]; writes go straight to glommio (which sends
/// at once and polls only when the socket's buffer is full).
pub struct PolledStream {
    stream: TcpStream,
    fd: RawFd,
    /// The poller and the stream's token in it; `None` when registering failed (every read then
    /// waits through glommio).
    registration: Option<(Rc<Poller>, usize)>,
    /// The thread was idle when the socket was last found empty: the read waits through
    /// glommio's poll.
    through_glommio: bool,
}

impl PolledStream {
    /// Registers `stream` with the current executor's poller. Must run on a glommio executor.
    /// Should the system refuse an epoll set or the registration, the stream is read through
    /// glommio alone, as a plain glommio stream is.
    pub fn new(stream: TcpStream) -> Self {
        let fd = stream.as_raw_fd();
        let registration =
            Poller::current().and_then(|poller| Ok((Rc::clone(&poller), poller.register(fd)?)));
        let registration = registration
            .inspect_err(|error| tracing::warn!(%error, "socket not in the epoll set; read through io_uring"))
            .ok();
        PolledStream { stream, fd, through_glommio: false, registration }
    }

    /// The stream itself (for its addresses and options).
    pub fn get_ref(&self) -> &TcpStream {
        &self.stream
    }

    /// A read through glommio, for a thread that idles: glommio reads the socket and, when the
    /// read leaves it empty (or finds it so), arms its io_uring poll at once, so the next read
    /// waits on that poll without asking the socket again. One `recv` per batch of data while
    /// the thread idles, where asking the socket first and then through glommio took up to four.
    fn poll_read_through_glommio(
        &mut self,
        context: &mut Context<'_>,
        buffer: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let result = match Pin::new(&mut self.stream).poll_read(context, buffer) {
            Poll::Pending => {
                self.through_glommio = true;
                return Poll::Pending;
            }
            Poll::Ready(result) => result,
        };
        self.through_glommio = false;
        if let (Ok(1..), Some((poller, _))) = (&result, &self.registration) {
            poller.read_after_idle();
        }
        Poll::Ready(result)
    }
}

impl Drop for PolledStream {
    fn drop(&mut self) {
        // Before the stream closes the descriptor (fields drop after this).
        if let Some((poller, token)) = &self.registration {
            poller.deregister(self.fd, *token);
        }
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut time = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `time` is valid for writes; the clock id is a constant the kernel knows.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

#[cfg(test)]
thread_local! {
    /// Calls of [`receive`] on this thread: the reads this crate makes itself, not glommio's.
    static RECEIVES: Cell<u64> = const { Cell::new(0) };
}

/// `recv` without waiting: `WouldBlock` when the socket is empty.
fn receive(fd: RawFd, buffer: &mut [u8]) -> io::Result<usize> {
    #[cfg(test)]
    RECEIVES.with(|receives| receives.set(receives.get() + 1));
    loop {
        // SAFETY: the buffer is valid for writes of its length; `fd` is the stream's open socket.
        let read = unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), libc::MSG_DONTWAIT) };
        if read >= 0 {
            return Ok(read as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl AsyncRead for PolledStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buffer.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some((poller, token)) = &this.registration else {
            return Pin::new(&mut this.stream).poll_read(context, buffer);
        };
        // Waiting through glommio already, or the thread idles: glommio's read asks the socket
        // and arms its poll when it is empty.
        if this.through_glommio || !poller.asking() {
            return this.poll_read_through_glommio(context, buffer);
        }
        match receive(this.fd, buffer) {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                if poller.wait(*token, context.waker()) {
                    Poll::Pending
                } else {
                    this.poll_read_through_glommio(context, buffer)
                }
            }
            result => Poll::Ready(result),
        }
    }
}

impl AsyncWrite for PolledStream {
    fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, buffer: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(context, buffer)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(context)
    }

    fn poll_close(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_close(context)
    }
}

/// One executor's epoll set and the readers waiting on it. Made by the first [`PolledStream`] of
/// an executor; its task runs while any stream is registered and ends with the last.
pub struct Poller {
    epoll: OwnedFd,
    /// The executor whose task serves this poller.
    executor: usize,
    state: RefCell<State>,
    /// The wall and thread CPU time when the thread's share of a core was last measured.
    sample: Cell<(Instant, Duration)>,
    /// The wakers an ask or an idle spell wakes, gathered here first (nothing may be woken while
    /// the state is borrowed); kept for its capacity, so waking allocates nothing.
    to_wake: RefCell<Vec<Waker>>,
}

/// What this thread's pollers have done since the thread started (counts only grow: a poller
/// made after another adds to the same counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollerStats {
    /// Times the epoll set was asked which sockets have data.
    pub asks: u64,
    /// Readers woken because the set named their socket.
    pub woken: u64,
    /// Times the thread was found idle and the readers moved to glommio's poll.
    pub idle_spells: u64,
    /// Reads that came in through glommio while the thread idled.
    pub reads_through_glommio: u64,
}

#[derive(Default)]
struct State {
    /// A registered stream's waiting reader, by token; `None` also for a vacant token.
    waiting: Vec<Option<Waker>>,
    vacant: Vec<usize>,
    registered: usize,
    /// The poller stopped asking: readers wait through glommio.
    idle: bool,
    /// The set failed: every reader waits through glommio from now on.
    broken: bool,
    /// The poller's task is running.
    running: bool,
    /// The poller's task, waiting while idle.
    poller_waker: Option<Waker>,
}

thread_local! {
    static CURRENT: RefCell<Weak<Poller>> = const { RefCell::new(Weak::new()) };
    static STATS: Cell<PollerStats> = const {
        Cell::new(PollerStats { asks: 0, woken: 0, idle_spells: 0, reads_through_glommio: 0 })
    };
}

impl Poller {
    /// The current executor's poller, made if it has none.
    fn current() -> io::Result<Rc<Poller>> {
        let executor = glommio::executor().id();
        CURRENT.with(|current| {
            if let Some(poller) = current.borrow().upgrade().filter(|poller| poller.executor == executor) {
                return Ok(poller);
            }
            // SAFETY: plain system call; the descriptor it returns is owned from here on.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and nothing else owns it.
            let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
            let poller = Rc::new(Poller {
                epoll,
                executor,
                state: RefCell::new(State::default()),
                sample: Cell::new((Instant::now(), thread_cpu())),
                to_wake: RefCell::new(Vec::new()),
            });
            *current.borrow_mut() = Rc::downgrade(&poller);
            Ok(poller)
        })
    }

    /// What this thread's pollers have done so far.
    pub fn thread_stats() -> PollerStats {
        STATS.with(Cell::get)
    }

    /// Whether the current executor's poller task is running.
    #[cfg(test)]
    fn is_running() -> bool {
        let executor = glommio::executor().id();
        CURRENT
            .with(|current| current.borrow().upgrade().filter(|poller| poller.executor == executor))
            .is_some_and(|poller| poller.state.borrow().running)
    }

    fn count(&self, update: impl FnOnce(&mut PollerStats)) {
        STATS.with(|stats| {
            let mut counted = stats.get();
            update(&mut counted);
            stats.set(counted);
        });
    }

    fn register(self: &Rc<Self>, fd: RawFd) -> io::Result<usize> {
        let token = {
            let mut state = self.state.borrow_mut();
            let token = match state.vacant.pop() {
                Some(token) => token,
                None => {
                    state.waiting.push(None);
                    state.waiting.len() - 1
                }
            };
            state.registered += 1;
            token
        };
        let mut event = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        // SAFETY: both descriptors are open; the event is a valid epoll_event.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
            let error = io::Error::last_os_error();
            self.release(token);
            return Err(error);
        }
        let start = {
            let mut state = self.state.borrow_mut();
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // In the executor's default queue, whichever queue registered the stream: a poller
            // in a queue of few shares would hold back every reader of the thread.
            let task = glommio::spawn_local_into(run(Rc::clone(self)), glommio::TaskQueueHandle::default());
            match task {
                Ok(task) => task.detach(),
                Err(_) => glommio::spawn_local(run(Rc::clone(self))).detach(),
            };
        }
        Ok(token)
    }

    fn release(&self, token: usize) {
        let mut state = self.state.borrow_mut();
        state.waiting[token] = None;
        state.vacant.push(token);
        state.registered -= 1;
    }

    fn deregister(&self, fd: RawFd, token: usize) {
        // SAFETY: `fd` is still open (its stream closes it after this); a null event is allowed
        // for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        self.release(token);
        // An idle poller ends once nothing is registered.
        if self.state.borrow().registered == 0 {
            self.wake_poller();
        }
    }

    /// Whether the poller asks the set for this thread's readers: false while the thread idles,
    /// once the set failed, or before the poller's task runs.
    fn asking(&self) -> bool {
        let state = self.state.borrow();
        !(state.idle || state.broken || !state.running)
    }

    /// Leaves `waker` to be woken when the socket of `token` may have data, and returns `true`;
    /// `false` when the thread is idle: the caller waits through glommio instead.
    fn wait(&self, token: usize, waker: &Waker) -> bool {
        if !self.asking() {
            return false;
        }
        let mut state = self.state.borrow_mut();
        match &mut state.waiting[token] {
            Some(waiting) if waiting.will_wake(waker) => {}
            slot => *slot = Some(waker.clone()),
        }
        true
    }

    /// The share of a core the thread ran since the last measurement, once a window has passed
    /// since it (then it starts the next window); `None` before.
    fn share(&self) -> Option<f64> {
        let (since, cpu_then) = self.sample.get();
        let now = Instant::now();
        let wall = now.duration_since(since);
        if wall < SHARE_WINDOW {
            return None;
        }
        let cpu = thread_cpu();
        self.sample.set((now, cpu));
        Some(cpu.saturating_sub(cpu_then).as_secs_f64() / wall.as_secs_f64())
    }

    /// A read came in through glommio: the poller goes back to work if the thread ran most of
    /// the last window.
    fn read_after_idle(&self) {
        self.count(|stats| stats.reads_through_glommio += 1);
        if !self.state.borrow().idle || !self.share().is_some_and(|share| share >= BUSY_SHARE_ENTER) {
            return;
        }
        self.state.borrow_mut().idle = false;
        self.wake_poller();
    }

    fn wake_poller(&self) {
        let waker = self.state.borrow_mut().poller_waker.take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Asks the set once and wakes the readers of the sockets it names; how many it named, or
    /// `None` when the set failed.
    fn ask(&self, events: &mut [libc::epoll_event]) -> Option<usize> {
        self.count(|stats| stats.asks += 1);
        let ready = loop {
            // SAFETY: `events` is valid for writes of its length.
            let ready = unsafe {
                libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 0)
            };
            if ready >= 0 {
                break ready as usize;
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                tracing::error!(%error, "epoll_wait failed; sockets are polled through io_uring from now on");
                return None;
            }
        };
        let mut woken = self.to_wake.take();
        {
            let mut state = self.state.borrow_mut();
            for event in &events[..ready] {
                let token = event.u64 as usize;
                if let Some(waker) = state.waiting.get_mut(token).and_then(Option::take) {
                    woken.push(waker);
                }
            }
        }
        self.count(|stats| stats.woken += woken.len() as u64);
        self.wake_all(woken);
        Some(ready)
    }

    /// Stops asking: wakes every waiting reader, which then waits through glommio.
    fn go_idle(&self, broken: bool) {
        self.count(|stats| stats.idle_spells += 1);
        self.release_waiting(|state| {
            state.idle = true;
            state.broken |= broken;
        });
    }

    /// Applies `change` to the state and wakes every waiting reader, which reads again and, the
    /// poller no longer asking, waits through glommio.
    fn release_waiting(&self, change: impl FnOnce(&mut State)) {
        let mut woken = self.to_wake.take();
        {
            let mut state = self.state.borrow_mut();
            change(&mut state);
            woken.extend(state.waiting.iter_mut().filter_map(Option::take));
        }
        self.wake_all(woken);
    }

    /// Wakes `woken` and keeps the emptied list for the next time.
    fn wake_all(&self, mut woken: Vec<Waker>) {
        woken.drain(..).for_each(Waker::wake);
        *self.to_wake.borrow_mut() = woken;
    }
}

/// Marks the poller's task ended however it ends (an executor dropping it included).
struct Running(Rc<Poller>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.release_waiting(|state| {
            state.running = false;
            state.idle = false;
            state.poller_waker = None;
        });
    }
}

/// The poller's task: asks every interval while the thread is busy, waits while it is idle, and
/// ends when no stream is registered.
async fn run(poller: Rc<Poller>) {
    let running = Running(poller);
    let poller = &running.0;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_PER_ASK];
    // One timer, reset for each interval: a new one would allocate every turn.
    let mut interval = glommio::timer::Timer::new(BUSY_POLL_INTERVAL);
    let mut quiet = 0;
    loop {
        if poller.state.borrow().registered == 0 {
            return;
        }
        let Some(ready) = poller.ask(&mut events) else {
            poller.go_idle(true);
            return;
        };
        quiet = if ready > 0 { 0 } else { quiet + 1 };
        let shared_core = poller.share().is_some_and(|share| share < BUSY_SHARE_LEAVE);
        if quiet < QUIET_TURNS && !shared_core {
            interval.reset(BUSY_POLL_INTERVAL);
            (&mut interval).await;
            continue;
        }
        poller.go_idle(false);
        poll_fn(|context| {
            let mut state = poller.state.borrow_mut();
            if state.idle && state.registered > 0 {
                state.poller_waker = Some(context.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        quiet = 0;
    }
}

#[cfg(test)]
mod tests;
