// Package chaos holds the pure parts of the chaos/soak harness (cmd/chaos, `make chaos`): the
// fault schedule derived from a seed, the checker's rules (which pod may hold which identity's
// token, what the VMs must hold at the end, which AzureAssignedIdentities are stuck) and the
// report. Nothing here talks to a cluster or to Azure, so every rule has fast unit tests; the
// program feeds it what its own watches and the emulator's state show.
package chaos

import (
	"fmt"
	"math/rand/v2"
	"sort"
	"time"
)

// FaultKind names one kind of injected fault.
type FaultKind string

// The fault kinds of this version.
const (
	// MICKill SIGKILLs the MIC leader (no lease release; the standby waits for the lease to expire).
	MICKill FaultKind = "mic-leader-sigkill"
	// MICStop stops the MIC leader gracefully (SIGTERM; the lease is released).
	MICStop FaultKind = "mic-leader-sigterm"
	// NMIKill SIGKILLs NMI on one node; it is restarted as its DaemonSet would.
	NMIKill FaultKind = "nmi-sigkill"
	// NMIRestart stops NMI on one node gracefully and lets it restart.
	NMIRestart FaultKind = "nmi-sigterm"
	// ARMThrottle answers every ARM call 429 with Retry-After for the fault's duration.
	ARMThrottle FaultKind = "arm-429-storm"
	// ARM5xx answers every ARM write 500 for the fault's duration.
	ARM5xx FaultKind = "arm-5xx"
	// AAD5xx answers every Azure AD token request 503 for the fault's duration.
	AAD5xx FaultKind = "aad-5xx"
	// EtcdPause freezes etcd (SIGSTOP) for the fault's duration.
	EtcdPause FaultKind = "etcd-pause"
	// APIServerRestart restarts kube-apiserver (SIGTERM, then the same flags and port).
	APIServerRestart FaultKind = "kube-apiserver-restart"
	// ARMSlow delays every VM/VMSS write by the fault's Latency for the window.
	ARMSlow FaultKind = "arm-slow-patch"
	// ARMLROFailed accepts VM/VMSS writes but ends their long-running operations Failed.
	ARMLROFailed FaultKind = "arm-lro-failed"
	// IMDSNotFound makes one node's IMDS answer "Identity not found" for one assigned identity,
	// as IMDS does before an assignment has propagated.
	IMDSNotFound FaultKind = "imds-identity-not-found"
	// AADSlow delays every Azure AD token request by the fault's Latency for the window.
	AADSlow FaultKind = "aad-slow"
	// NodeDelete deletes one Node and stops its agent and NMI (a VMSS instance deleted), then
	// registers it again and starts both after the window.
	NodeDelete FaultKind = "node-delete-readd"
	// IdentityRecreate deletes one user-assigned identity through ARM, re-creates it after the
	// window (new client and principal IDs) and repairs as an operator would.
	IdentityRecreate FaultKind = "identity-delete-recreate"
)

// AllKinds lists every fault kind, in a fixed order (the schedule's draws depend on it).
var AllKinds = []FaultKind{MICKill, MICStop, NMIKill, NMIRestart, ARMThrottle, ARM5xx, AAD5xx, EtcdPause, APIServerRestart,
	ARMSlow, ARMLROFailed, IMDSNotFound, AADSlow, NodeDelete, IdentityRecreate}

// Emulated reports whether the fault is an emulator fault window (ending one clears the
// emulator's faults).
func (k FaultKind) Emulated() bool {
	switch k {
	case ARMThrottle, ARM5xx, AAD5xx, ARMSlow, ARMLROFailed, IMDSNotFound, AADSlow:
		return true
	}
	return false
}

// Exclusive reports whether the fault lasts a window that no other exclusive fault may overlap:
// emulator windows (ending one clears them all), an identity deleted from Azure (the harness's
// own ARM calls must not meet an injected fault) and control-plane faults (one process at a time).
func (k FaultKind) Exclusive() bool {
	return k.Emulated() || k == IdentityRecreate || k == EtcdPause || k == APIServerRestart
}

// OnNode reports whether the fault picks a node (Target modulo the node count).
func (k FaultKind) OnNode() bool {
	return k == NMIKill || k == NMIRestart || k == IMDSNotFound || k == NodeDelete
}

// OnIdentity reports whether the fault picks a standard identity (Target modulo their count).
func (k FaultKind) OnIdentity() bool { return k == IMDSNotFound || k == IdentityRecreate }

// Fault is one scheduled fault.
type Fault struct {
	// At is the offset from the start of the fault phase.
	At   time.Duration `json:"at"`
	Kind FaultKind     `json:"kind"`
	// Target picks the node (OnNode) by index modulo the node count and the identity
	// (OnIdentity) modulo the identity count.
	Target int `json:"target,omitempty"`
	// For is how long a window lasts (0 for process faults): an emulator window, the time a
	// node or an identity stays deleted.
	For time.Duration `json:"for,omitempty"`
	// Latency is the delay of each call in a slow window (ARMSlow, AADSlow).
	Latency time.Duration `json:"latency,omitempty"`
}

func (f Fault) String() string {
	s := fmt.Sprintf("+%s %s", f.At.Round(100*time.Millisecond), f.Kind)
	if f.Kind.OnNode() {
		s += fmt.Sprintf(" node#%d", f.Target)
	}
	if f.Kind.OnIdentity() {
		s += fmt.Sprintf(" identity#%d", f.Target)
	}
	if f.For > 0 {
		s += " for " + f.For.String()
	}
	if f.Latency > 0 {
		s += " latency " + f.Latency.String()
	}
	return s
}

// Intensity bounds: faults per minute.
const (
	MinIntensity = 0.5
	MaxIntensity = 30.0
)

// ScheduleError is an invalid schedule request.
type ScheduleError struct{ Reason string }

func (e *ScheduleError) Error() string { return "chaos schedule: " + e.Reason }

// NewSchedule draws the faults of a run of length d at intensity faults per minute from seed.
// The same arguments give the same schedule. Faults start after a quiet first tenth of d and
// every window has ended before the last fifth, so the settle phase follows a calm stretch;
// exclusive windows (Exclusive) never overlap, and neither do two node deletions.
func NewSchedule(seed uint64, d time.Duration, intensity float64) ([]Fault, error) {
	if d < 10*time.Second {
		return nil, &ScheduleError{Reason: fmt.Sprintf("duration %s is too short: give at least 10s", d)}
	}
	if intensity < MinIntensity || intensity > MaxIntensity {
		return nil, &ScheduleError{Reason: fmt.Sprintf("intensity %g faults/minute is out of range: use %g..%g", intensity, MinIntensity, MaxIntensity)}
	}
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	start, end := d/10, d-d/5
	n := int(intensity*d.Minutes() + 0.5)
	if n < 1 {
		n = 1
	}
	var out []Fault
	for i := 0; i < n; i++ {
		f := Fault{At: start + time.Duration(r.Int64N(int64(end-start))), Kind: AllKinds[r.IntN(len(AllKinds))], Target: r.IntN(1 << 16)}
		drawWindow(r, &f)
		out = append(out, f)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	// Windows that would overlap an earlier one of their track move to its end; a window that
	// would not end before the last fifth is shortened to its kind's minimum or dropped.
	var emuFree, nodeFree time.Duration // when the last exclusive / node window ends
	kept := out[:0]
	for _, f := range out {
		free := (*time.Duration)(nil)
		switch {
		case f.Kind.Exclusive():
			free = &emuFree
		case f.Kind == NodeDelete:
			free = &nodeFree
		}
		if free != nil && f.At < *free {
			f.At = *free
		}
		if f.At >= end {
			continue
		}
		if f.At+f.For > end {
			if f.For = end - f.At; f.For < minWindow[f.Kind] {
				continue
			}
		}
		if free != nil {
			*free = f.At + f.For + time.Second
		}
		kept = append(kept, f)
	}
	sort.SliceStable(kept, func(i, j int) bool { return kept[i].At < kept[j].At })
	return kept, nil
}

// minWindow is the shortest window worth injecting per kind (a window cut at the end of the
// fault phase is dropped when shorter).
var minWindow = map[FaultKind]time.Duration{NodeDelete: 15 * time.Second, IdentityRecreate: 3 * time.Second, ARMSlow: 5 * time.Second}

// drawWindow draws f's window and latency. NodeDelete windows span both sides of PodGC's
// orphan quarantine (40 s, checked every 20 s, so pods of a deleted node are deleted 40-80 s
// after it): shorter ones re-add the node before its pods go, longer ones after.
func drawWindow(r *rand.Rand, f *Fault) {
	sec := func(lo, hi int) time.Duration { return time.Duration(lo+r.IntN(hi-lo+1)) * time.Second }
	switch f.Kind {
	case ARMSlow:
		f.For, f.Latency = sec(8, 20), sec(5, 15)
	case AADSlow:
		f.For, f.Latency = sec(5, 12), sec(2, 8)
	case IMDSNotFound:
		// NMI caches tokens, so IMDS is asked only for pods new on the node: a longer window
		// than the others, so that some meet it.
		f.For = sec(5, 20)
	case NodeDelete:
		f.For = sec(15, 100)
	case IdentityRecreate:
		f.For = sec(5, 15)
	case EtcdPause:
		f.For = sec(1, 4)
	case APIServerRestart:
		f.For = 5 * time.Second // the slot kept free while it restarts
	default:
		if f.Kind.Emulated() {
			f.For = sec(2, 8)
		}
	}
}

// CountByKind counts faults per kind.
func CountByKind(fs []Fault) map[FaultKind]int {
	m := map[FaultKind]int{}
	for _, f := range fs {
		m[f.Kind]++
	}
	return m
}
