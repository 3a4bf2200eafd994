package chaos

import (
	"fmt"
	"sort"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// Set is a set of lower-case strings (ARM resource IDs of identities).
type Set map[string]bool

// Add adds s (lower-cased).
func (s Set) Add(v string) { s[strings.ToLower(v)] = true }

// Sorted lists the members.
func (s Set) Sorted() []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Needed returns, per VM or scale set (nodeResource maps a node name to it), the identities its
// running pods are bound to; federated identities are never needed on a VM.
func Needed(w *World, nodeResource map[string]string) map[string]Set {
	out := map[string]Set{}
	for _, p := range w.Pods {
		res, ok := nodeResource[p.Node]
		if !ok || !p.Running {
			continue
		}
		for _, id := range w.Bound(p) {
			if id.Federated || id.ResourceID == "" {
				continue
			}
			if out[res] == nil {
				out[res] = Set{}
			}
			out[res].Add(id.ResourceID)
		}
	}
	return out
}

// CheckVMs compares what each VM/VMSS holds (have) with what its pods need plus what MIC never
// owned there (untouched: identities present before the workload started). Extra identities
// are leaks, absent ones missing assignments.
func CheckVMs(have, needed, untouched map[string]Set) (leaked, missing []Violation) {
	resources := Set{}
	for _, m := range []map[string]Set{have, needed} {
		for r := range m {
			resources[r] = true
		}
	}
	for _, r := range resources.Sorted() {
		for _, id := range have[r].Sorted() {
			if !needed[r][id] && !untouched[r][id] {
				leaked = append(leaked, Violation{Rule: RuleLeaked, Detail: fmt.Sprintf("%s holds %s, which no running pod on it is bound to and MIC assigned", r, id)})
			}
		}
		for _, id := range needed[r].Sorted() {
			if !have[r][id] {
				missing = append(missing, Violation{Rule: RuleMissing, Detail: fmt.Sprintf("%s lacks %s, which a running pod on it is bound to", r, id)})
			}
		}
	}
	return leaked, missing
}

// AssignedIdentity is what the checker knows of an AzureAssignedIdentity.
type AssignedIdentity struct {
	Key        types.NamespacedName
	Pod        types.NamespacedName
	Status     string // Created, Assigned, Unassigned
	Finalizers []string
	Deleting   bool
	// Explained is set when a Warning event names the AAI or its pod (why it is not Assigned).
	Explained bool
}

// StuckAssignments returns the AzureAssignedIdentities that are stuck after the settle time:
// still Created with no Warning event explaining why, or kept (by a finalizer or otherwise) for
// a pod that no longer exists.
func StuckAssignments(aais []AssignedIdentity, podExists func(types.NamespacedName) bool) []Violation {
	var out []Violation
	for _, a := range aais {
		switch {
		case !podExists(a.Pod):
			out = append(out, Violation{Rule: RuleStuck, Detail: fmt.Sprintf("%s (status %q, finalizers %v, deleting %t) is for pod %s, which no longer exists",
				a.Key, a.Status, a.Finalizers, a.Deleting, a.Pod)})
		case a.Status == "Created" && !a.Explained:
			out = append(out, Violation{Rule: RuleStuck, Detail: fmt.Sprintf("%s for pod %s is still Created with no Warning event saying why", a.Key, a.Pod)})
		}
	}
	return out
}

// CheckFreshTokens returns a violation for every running pod that should get tokens (WantsToken), running for longer than
// bound, whose last token (lastToken; zero when none) is older than bound at now.
func CheckFreshTokens(w *World, runningSince, lastToken map[types.NamespacedName]time.Time, now time.Time, bound time.Duration) []Violation {
	var out []Violation
	keys := make([]types.NamespacedName, 0, len(w.Pods))
	for k := range w.Pods {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, k := range keys {
		p := w.Pods[k]
		since, ok := runningSince[k]
		if !p.Running || !ok || now.Sub(since) < bound || !w.WantsToken(p) {
			continue
		}
		if last := lastToken[k]; last.IsZero() || now.Sub(last) > bound {
			out = append(out, Violation{Rule: RuleNoToken, Detail: fmt.Sprintf("pod %s on %s is bound and running since %s but got no token in the last %s (last: %s)",
				k, p.Node, since.Format(time.RFC3339), bound, fmtTime(last))})
		}
	}
	return out
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Format(time.RFC3339Nano)
}
