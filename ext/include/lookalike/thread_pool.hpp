// A persistent pool of worker threads, shared by every call of the kernels in this process.
//
// Why: a server runs the kernel beside gRPC, torch and image-decoding pools; starting one
// thread per core on every call (what the first kernel did) costs tens of microseconds per
// thread and ignores the process's thread budget. Here the budget is set once
// (`set_thread_budget`), the workers are started once, and each call hands them its jobs.
//
// A call (`ThreadPool::run`) queues one batch of `count` jobs; idle workers and the calling
// thread claim job indices from it until none is left, then the caller waits for the jobs
// claimed by others. The caller always works too, so a call completes even when every worker
// is busy with other callers' batches (no deadlock, concurrent callers simply share workers).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define LOOKALIKE_HAVE_GETPID 1
#else
#define LOOKALIKE_HAVE_GETPID 0
#endif

namespace lookalike {

class ThreadPool {
 public:
  /// Starts `workers` threads (0 is allowed: every job then runs on the calling thread).
  explicit ThreadPool(std::size_t workers) {
    threads_.reserve(workers);
    for (std::size_t i = 0; i < workers; ++i) {
      try {
        threads_.emplace_back([this] { worker_loop(); });
      } catch (const std::system_error&) {
        break;  // no more threads to be had: run with the ones started
      }
    }
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (std::thread& t : threads_) t.join();
  }

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  std::size_t workers() const noexcept { return threads_.size(); }

  /// Calls fn(i) for every i in [0, count), on the workers and the calling thread, and returns
  /// when all calls have returned. fn must not throw (catch inside and report afterwards).
  void run(std::size_t count, const std::function<void(std::size_t)>& fn) {
    if (count == 0) return;
    if (count == 1 || threads_.empty()) {
      for (std::size_t i = 0; i < count; ++i) fn(i);
      return;
    }
    auto batch = std::make_shared<Batch>(fn, count);
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(batch);
    }
    if (count - 1 >= threads_.size()) {
      cv_.notify_all();
    } else {
      for (std::size_t i = 0; i + 1 < count; ++i) cv_.notify_one();
    }
    for (;;) {
      const std::size_t i = batch->next.fetch_add(1);
      if (i >= count) break;
      fn(i);
      batch->done.fetch_add(1);
    }
    {
      std::unique_lock<std::mutex> lock(batch->mu);
      batch->cv.wait(lock, [&] { return batch->done.load() == count; });
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (*it == batch) {
        queue_.erase(it);
        break;
      }
    }
  }

 private:
  struct Batch {
    Batch(const std::function<void(std::size_t)>& f, std::size_t n) : fn(f), count(n) {}
    const std::function<void(std::size_t)>& fn;  // lives on the caller's stack until done == count
    std::size_t count;
    std::atomic<std::size_t> next{0};
    std::atomic<std::size_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };

  void worker_loop() {
    for (;;) {
      std::shared_ptr<Batch> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
        if (stop_) return;
        batch = queue_.front();
      }
      const std::size_t i = batch->next.fetch_add(1);
      if (i >= batch->count) {  // every job of this batch is claimed: drop it from the queue
        std::lock_guard<std::mutex> lock(mu_);
        if (!queue_.empty() && queue_.front() == batch) queue_.pop_front();
        continue;
      }
      batch->fn(i);
      if (batch->done.fetch_add(1) + 1 == batch->count) {
        std::lock_guard<std::mutex> lock(batch->mu);
        batch->cv.notify_all();
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Batch>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

namespace detail {

inline std::size_t hardware_threads() noexcept {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : hw;
}

struct PoolSlot {
  std::mutex mu;
  std::shared_ptr<ThreadPool> pool;
  std::size_t budget = 0;  // 0: not set yet (hardware_threads())
#if LOOKALIKE_HAVE_GETPID
  pid_t pid = 0;
#endif
};

// Never destroyed: worker threads must not be joined from static destructors at exit.
inline PoolSlot& pool_slot() {
  static PoolSlot* slot = new PoolSlot();
  return *slot;
}

}  // namespace detail

/// The thread budget: how many threads (the caller included) a call uses when it does not
/// name a count. Default: std::thread::hardware_concurrency().
inline std::size_t thread_budget() {
  detail::PoolSlot& slot = detail::pool_slot();
  std::lock_guard<std::mutex> lock(slot.mu);
  return slot.budget == 0 ? detail::hardware_threads() : slot.budget;
}

/// Sets the thread budget (0 = hardware threads) and restarts the pool with budget - 1 workers
/// (the calling thread is the last one). Calls in flight finish on the pool they started with.
inline void set_thread_budget(std::size_t threads) {
  detail::PoolSlot& slot = detail::pool_slot();
  std::lock_guard<std::mutex> lock(slot.mu);
  slot.budget = threads;
  slot.pool.reset();  // started again, at the new size, by the next call
}

/// The shared pool (started on first use; started afresh in a forked child, whose copy of the
/// parent's pool has no threads behind it).
inline std::shared_ptr<ThreadPool> shared_thread_pool() {
  detail::PoolSlot& slot = detail::pool_slot();
  std::lock_guard<std::mutex> lock(slot.mu);
#if LOOKALIKE_HAVE_GETPID
  const pid_t pid = ::getpid();
  if (slot.pid != pid) {
    if (slot.pool) new std::shared_ptr<ThreadPool>(std::move(slot.pool));  // leaked: its threads are the parent's
    slot.pool.reset();
    slot.pid = pid;
  }
#endif
  if (!slot.pool) {
    const std::size_t budget = slot.budget == 0 ? detail::hardware_threads() : slot.budget;
    slot.pool = std::make_shared<ThreadPool>(budget - 1);
  }
  return slot.pool;
}

}  // namespace lookalike
