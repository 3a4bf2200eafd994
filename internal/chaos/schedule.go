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
)

// AllKinds lists every fault kind, in a fixed order (the schedule's draws depend on it).
var AllKinds = []FaultKind{MICKill, MICStop, NMIKill, NMIRestart, ARMThrottle, ARM5xx, AAD5xx, EtcdPause, APIServerRestart}

// Emulated reports whether the fault is an emulator window (ending one clears the emulator's
// faults).
func (k FaultKind) Emulated() bool { return k == ARMThrottle || k == ARM5xx || k == AAD5xx }

// Exclusive reports whether the fault lasts a window that no other exclusive fault may overlap:
// emulator windows (ending one clears them all) and control-plane faults (one process at a time).
func (k FaultKind) Exclusive() bool { return k.Emulated() || k == EtcdPause || k == APIServerRestart }

// Fault is one scheduled fault.
type Fault struct {
	// At is the offset from the start of the fault phase.
	At   time.Duration `json:"at"`
	Kind FaultKind     `json:"kind"`
	// Target picks the node (NMI faults) by index modulo the node count.
	Target int `json:"target,omitempty"`
	// For is how long an emulator window lasts (0 for process faults).
	For time.Duration `json:"for,omitempty"`
}

func (f Fault) String() string {
	s := fmt.Sprintf("+%s %s", f.At.Round(100*time.Millisecond), f.Kind)
	if f.Kind == NMIKill || f.Kind == NMIRestart {
		s += fmt.Sprintf(" node#%d", f.Target)
	}
	if f.For > 0 {
		s += " for " + f.For.String()
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
// none starts in the last fifth, so the settle phase follows a calm stretch; exclusive windows
// (Exclusive) never overlap.
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
	var emuFree time.Duration // when the last exclusive window ends
	for i := 0; i < n; i++ {
		f := Fault{At: start + time.Duration(r.Int64N(int64(end-start))), Kind: AllKinds[r.IntN(len(AllKinds))], Target: r.IntN(1 << 16)}
		switch {
		case f.Kind.Emulated():
			f.For = time.Duration(2+r.IntN(7)) * time.Second
		case f.Kind == EtcdPause:
			f.For = time.Duration(1+r.IntN(4)) * time.Second
		case f.Kind == APIServerRestart:
			f.For = 5 * time.Second // the slot kept free while it restarts
		}
		out = append(out, f)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].At < out[j].At })
	// Exclusive windows that would overlap an earlier one move to its end (or are dropped past end).
	kept := out[:0]
	for _, f := range out {
		if f.Kind.Exclusive() {
			if f.At < emuFree {
				f.At = emuFree
			}
			if f.At >= end {
				continue
			}
			emuFree = f.At + f.For + time.Second
		}
		kept = append(kept, f)
	}
	sort.SliceStable(kept, func(i, j int) bool { return kept[i].At < kept[j].At })
	return kept, nil
}

// CountByKind counts faults per kind.
func CountByKind(fs []Fault) map[FaultKind]int {
	m := map[FaultKind]int{}
	for _, f := range fs {
		m[f.Kind]++
	}
	return m
}
