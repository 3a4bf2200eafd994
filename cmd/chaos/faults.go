package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// injector applies the schedule's faults to the sandbox and measures, after each, how long until
// every AzureAssignedIdentity is Assigned again.
type injector struct {
	sb  *sandbox.Sandbox
	w   *watcher
	crc client.Client // the operator's writes (repairs after an identity is re-created)
	// start is when the fault phase began: windows end at their scheduled time even when the
	// fault before made them start late, so exclusive windows never overlap.
	start time.Time

	mu       sync.Mutex
	recovery []chaos.Recovery
	notes    []string
	wg       sync.WaitGroup
}

// run injects the faults at their offsets from start; it returns when the last has been applied
// (emulator windows may still be open: wait on inj.wg).
func (inj *injector) run(ctx context.Context, start time.Time, faults []chaos.Fault) {
	inj.start = start
	for i, f := range faults {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(start.Add(f.At))):
		}
		klog.InfoS("fault", "fault", f.String())
		end, back := inj.apply(ctx, f)
		next := time.Time{}
		if i+1 < len(faults) {
			next = start.Add(faults[i+1].At)
		}
		inj.wg.Add(1)
		go func() {
			defer inj.wg.Done()
			inj.measure(ctx, f, end, next, back)
		}()
	}
}

// apply injects f and returns when it ends (emulator windows close in the background) and a
// check that the component it hit is back (a MIC leader again; that NMI restarted and ready).
func (inj *injector) apply(ctx context.Context, f chaos.Fault) (time.Time, func(context.Context) bool) {
	now := time.Now()
	back := func(context.Context) bool { return true }
	switch f.Kind {
	case chaos.MICKill, chaos.MICStop:
		// Right after another MIC fault there may be no leader yet: wait a little for one.
		c := inj.leader(ctx)
		for deadline := time.Now().Add(10 * time.Second); c == nil && time.Now().Before(deadline) && ctx.Err() == nil; c = inj.leader(ctx) {
			time.Sleep(250 * time.Millisecond)
		}
		if c == nil {
			inj.note("%s at %s: no MIC leader found; nothing killed", f.Kind, f.At)
			return now, back
		}
		if f.Kind == chaos.MICKill {
			c.Kill()
		} else {
			c.Terminate()
		}
		back = func(ctx context.Context) bool { return inj.leader(ctx) != nil }
	case chaos.NMIKill, chaos.NMIRestart:
		n := inj.sb.Nodes[f.Target%len(inj.sb.Nodes)]
		if n.NMI == nil || inj.sb.NodeDown(n.Name) {
			inj.note("%s at %s: no NMI runs on %s (none configured, or the node is deleted)", f.Kind, f.At, n.Name)
			return now, back
		}
		before := n.NMI.Restarts()
		if f.Kind == chaos.NMIKill {
			n.NMI.Kill()
		} else {
			n.NMI.Terminate()
		}
		back = func(ctx context.Context) bool {
			if n.NMI.Restarts() == before {
				return false
			}
			code, _, err := n.NMI.Get(ctx, sandbox.NMIProbePort, "/readyz")
			return err == nil && code == http.StatusOK
		}
	case chaos.EtcdPause:
		inj.wg.Add(1)
		go func() {
			defer inj.wg.Done()
			if err := inj.sb.PauseEtcd(ctx, f.For); err != nil && ctx.Err() == nil {
				inj.note("%s at %s: %v", f.Kind, f.At, err)
			}
		}()
		return now.Add(f.For), back
	case chaos.APIServerRestart:
		if err := inj.sb.RestartAPIServer(ctx); err != nil && ctx.Err() == nil {
			inj.note("%s at %s: %v", f.Kind, f.At, err)
		}
		return time.Now(), back
	case chaos.ARMThrottle:
		inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceARM, Status: http.StatusTooManyRequests, Code: "TooManyRequests",
			Message: "chaos: throttled", RetryAfter: emulator.D(2 * time.Second)})
	case chaos.ARM5xx:
		for _, op := range []string{emulator.OpVMSSUpdate, emulator.OpVMUpdate} {
			inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceARM, Operation: op, Status: http.StatusInternalServerError,
				Code: "InternalServerError", Message: "chaos: ARM failed"})
		}
	case chaos.AAD5xx:
		inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Status: http.StatusServiceUnavailable,
			Code: "temporarily_unavailable", Message: "chaos: Azure AD unavailable"})
	case chaos.ARMSlow:
		for _, op := range []string{emulator.OpVMSSUpdate, emulator.OpVMUpdate} {
			inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceARM, Operation: op, Latency: emulator.D(f.Latency)})
		}
	case chaos.ARMLROFailed:
		// What Compute answers when an identity update fails inside the operation.
		for _, op := range []string{emulator.OpVMSSUpdate, emulator.OpVMUpdate} {
			inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceARM, Operation: op, Async: true,
				Code: "InternalExecutionError", Message: "An internal execution error occurred. Please retry later."})
		}
	case chaos.IMDSNotFound:
		inj.identityNotFound(f)
	case chaos.AADSlow:
		inj.sb.Emulator.AddFault(emulator.Fault{Service: emulator.ServiceAAD, Operation: emulator.OpAADToken, Latency: emulator.D(f.Latency)})
	case chaos.NodeDelete:
		return inj.deleteNode(ctx, f)
	case chaos.IdentityRecreate:
		return inj.recreateIdentity(ctx, f), back
	}
	if !f.Kind.Emulated() {
		return now, back
	}
	end := inj.windowEnd(f)
	evidence := inj.windowEvidence(f)
	before, hits := inj.countAll(evidence), inj.sb.Emulator.FaultHits()
	inj.atEnd(ctx, end, func() {
		// Windows never overlap (chaos.NewSchedule), so clearing every fault ends just this one.
		inj.sb.Emulator.ClearFaults()
		inj.note("%s at %s: the window's faults matched %d calls; %d calls of %v in the window", f.Kind, f.At,
			inj.sb.Emulator.FaultHits()-hits, inj.countAll(evidence)-before, evidence)
	})
	return end, back
}

// atEnd runs fn in the background once end has come, or at once when the run is cancelled
// (windows are always closed); the injector's Wait waits for it.
func (inj *injector) atEnd(ctx context.Context, end time.Time, fn func()) {
	inj.wg.Add(1)
	go func() {
		defer inj.wg.Done()
		select {
		case <-ctx.Done():
		case <-time.After(time.Until(end)):
		}
		fn()
	}()
}

// leader is the MIC replica whose leader-election metric is 1.
func (inj *injector) leader(ctx context.Context) *sandbox.Component {
	for _, c := range inj.sb.MIC {
		code, body, err := c.Get(ctx, sandbox.MICMetricsPort, "/metrics")
		if err != nil || code != http.StatusOK {
			continue
		}
		for _, line := range strings.Split(body, "\n") {
			if strings.HasPrefix(line, "leader_election_master_status") && strings.HasSuffix(strings.TrimSpace(line), " 1") {
				return c
			}
		}
	}
	return nil
}

// measure polls, from end, until the component hit is back and MIC has converged (watcher.
// converged); it gives up (not counting the fault) when the next fault starts first.
func (inj *injector) measure(ctx context.Context, f chaos.Fault, end, next time.Time, back func(context.Context) bool) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(time.Until(end)):
	}
	for {
		if !next.IsZero() && time.Now().After(next) {
			return
		}
		if ok, _, err := inj.w.converged(ctx); err == nil && ok && back(ctx) {
			inj.mu.Lock()
			inj.recovery = append(inj.recovery, chaos.Recovery{At: chaos.Duration(f.At), Kind: f.Kind, Took: chaos.Duration(time.Since(end))})
			inj.mu.Unlock()
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// windowEnd is when f's window is scheduled to end (now, when that has passed).
func (inj *injector) windowEnd(f chaos.Fault) time.Time {
	return later(inj.start.Add(f.At+f.For), time.Now())
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (inj *injector) note(format string, args ...any) {
	inj.mu.Lock()
	defer inj.mu.Unlock()
	inj.notes = append(inj.notes, fmt.Sprintf(format, args...))
}
