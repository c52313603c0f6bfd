// Evaluation over the ranks of a launched world (runtime launch, torchrun, mpirun): the work
// items of a task (a choice's log-likelihood, a page, a window, a needle sample) are dealt out
// round-robin, and their results gathered so that every rank holds all of them in item order, each
// computed exactly as one process computes it. Metrics are then assembled from them as in a
// single-process run, so the scores are the same to the last bit whatever the number of ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace rt::dist {
class ProcessGroup;
}

namespace rt::eval {

// Runs compute(i, out) for the items i this rank owns (i % ranks == rank; every item without a
// group), out pointing to `width` doubles of item i, and returns all n_items * width values.
// progress(k) is called with the count of this rank's items done.
std::vector<double> sharded_items(dist::ProcessGroup* group, int64_t n_items, int width,
                                  const std::function<void(int64_t item, double* out)>& compute,
                                  const std::function<void(int64_t done)>& progress = nullptr);

// How many of n_items this rank computes (for progress totals).
int64_t items_of_rank(const dist::ProcessGroup* group, int64_t n_items);

}  // namespace rt::eval
