package mic

import (
	"sync"

	"github.com/podidentity/podidentity/internal/mic/desired"
)

// problemKey is one distinct bad-input problem.
type problemKey struct {
	kind    desired.ProblemKind
	object  desired.Key
	message string
}

// pairKey is one distinct assignment failure of a (pod, identity) pair.
type pairKey struct {
	aai     desired.Key
	message string
}

// reported remembers which problems and assignment failures were already reported, so that
// each is reported once while it lasts. Entries of problems that went away and of pairs that
// are no longer desired are forgotten at every pass (retain), so the set does not grow with
// churn; a problem that comes back is reported again.
type reported struct {
	mu       sync.Mutex
	problems map[problemKey]bool
	pairs    map[pairKey]bool
}

func newReported() *reported {
	return &reported{problems: map[problemKey]bool{}, pairs: map[pairKey]bool{}}
}

// firstProblem records p and reports whether it is new.
func (r *reported) firstProblem(p desired.Problem) bool {
	k := problemKey{p.Kind, p.Object, p.Message}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.problems[k] {
		return false
	}
	r.problems[k] = true
	return true
}

// firstFailure records a failure of the pair k and reports whether it is new.
func (r *reported) firstFailure(k desired.Key, msg string) bool {
	pk := pairKey{k, msg}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pairs[pk] {
		return false
	}
	r.pairs[pk] = true
	return true
}

// retain forgets problems not in st.Problems and failures of pairs not in st.AAIs.
func (r *reported) retain(st *desired.State) {
	now := make(map[problemKey]bool, len(st.Problems))
	for _, p := range st.Problems {
		now[problemKey{p.Kind, p.Object, p.Message}] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.problems {
		if !now[k] {
			delete(r.problems, k)
		}
	}
	for k := range r.pairs {
		if _, ok := st.AAIs[k.aai]; !ok {
			delete(r.pairs, k)
		}
	}
}

// size is the number of entries (tests).
func (r *reported) size() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.problems) + len(r.pairs)
}
