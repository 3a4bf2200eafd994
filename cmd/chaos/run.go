package main

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"

	"github.com/podidentity/podidentity/internal/chaos"
	"github.com/podidentity/podidentity/internal/emulator"
	"github.com/podidentity/podidentity/internal/sandbox"
)

// sandboxOptions are test/e2e's fast settings, without the demo, with probe clients that
// refresh their token every 2 s so that every pod keeps asking.
func sandboxOptions(o options, log logr.Logger) sandbox.Options {
	return sandbox.Options{
		Timing: sandbox.TimingFast, RepoRoot: o.repo, TempRoot: os.TempDir(), MICReplicas: 2, NMI: !o.noNMI,
		MICArgs: []string{
			"--identity-assignment-reconcile-interval=5s", "--batch-idle=200ms", "--batch-max=2s",
			"--leader-election-duration=4s", "--arm-poll-interval=200ms",
		},
		NMIArgs:        []string{"--retry-attempts-for-created=8", "--retry-attempts-for-assigned=8", "--find-identity-retry-interval=1"},
		ProbeArgs:      []string{"--retries=4", "--retry-delay=500ms", "--retry-max-delay=2s", "--request-timeout=60s", "--period=2s"},
		RestartBackoff: time.Second, Verbosity: 2, StartTimeout: 3 * time.Minute, KeepFiles: o.keep,
		World: chaosWorld, Out: os.Stderr, Log: log,
	}
}

// nodeResources maps each node to the VM or scale set that carries its identities.
func nodeResources(sb *sandbox.Sandbox) map[string]string {
	out := map[string]string{}
	for _, n := range sb.Nodes {
		if strings.Contains(n.ProviderID, "virtualMachineScaleSets/") {
			out[n.Name] = sandbox.ScaleSet
		} else {
			out[n.Name] = n.HostKey
		}
	}
	return out
}

// vmIdentities reads what every VM and scale set holds, from the emulator's ARM state.
func vmIdentities(sb *sandbox.Sandbox) (map[string]chaos.Set, error) {
	out := map[string]chaos.Set{}
	for _, res := range nodeResources(sb) {
		ids, err := sb.Emulator.AssignedIdentities(res)
		if err != nil {
			return nil, fmt.Errorf("reading the identities of %s: %w", res, err)
		}
		out[res] = chaos.Set{}
		for _, id := range ids {
			out[res].Add(id)
		}
	}
	return out, nil
}

// tokenChecker checks every probe-client result as it arrives.
type tokenChecker struct {
	sb    *sandbox.Sandbox
	w     *watcher
	tl    *chaos.Timeline
	grace time.Duration
	fedID string

	mu        sync.Mutex
	seen      int
	rep       *chaos.Report
	lastToken map[types.NamespacedName]time.Time
	pending   []chaos.Token // flagged while the checker's watch was behind
	maxHeap   uint64
}

// drain checks the results that arrived since the last call, and the tokens deferred before. A
// token that breaks the rule is a violation only when the checker's view of its pod, the
// bindings and the identities is current (the same resourceVersions as a fresh read): otherwise
// the checker's own watch is behind (it reconnects slowly after an apiserver restart) and the
// token waits until the watch has caught up. Tokens still unverifiable at the end are reported
// in the notes.
func (tc *tokenChecker) drain(ctx context.Context, final bool) {
	all, _ := tc.sb.Results()
	tc.mu.Lock()
	defer tc.mu.Unlock()
	toks := tc.pending
	tc.pending = nil
	for _, r := range all[tc.seen:] {
		tc.rep.Requests++
		if r.Result.Kind != "token" {
			continue
		}
		if !r.Result.OK {
			tc.rep.TokenErrors++
			continue
		}
		tc.rep.Tokens++
		if strings.EqualFold(r.Result.ClientID, tc.fedID) {
			tc.rep.TokensFed++
		}
		end, err := time.Parse(time.RFC3339Nano, r.Result.Time)
		if err != nil {
			tc.rep.Violations = append(tc.rep.Violations, chaos.Violation{Rule: "unreadable-result", Detail: fmt.Sprintf("result of %s/%s has time %q", r.Namespace, r.Pod, r.Result.Time)})
			continue
		}
		tok := chaos.Token{Pod: types.NamespacedName{Namespace: r.Namespace, Name: r.Pod}, Node: r.Node, ClientID: r.Result.ClientID,
			Start: end.Add(-time.Duration(r.Result.ElapsedMS) * time.Millisecond), End: end}
		tc.lastToken[tok.Pod] = end
		toks = append(toks, tok)
	}
	tc.seen = len(all)
	for _, tok := range toks {
		v := tc.tl.CheckToken(tok, tc.grace)
		if v == nil {
			continue
		}
		if cur, why := tc.w.current(ctx, tok.Pod); !cur {
			if final {
				tc.rep.Notes = append(tc.rep.Notes, fmt.Sprintf("unverifiable (checker watch behind at the end: %s): %s", why, v.Detail))
			} else {
				tc.pending = append(tc.pending, tok)
			}
			continue
		}
		pod, known := tc.w.pod(tok.Pod)
		v.Detail += fmt.Sprintf("; the checker's current view: pod known %t, selector %q, ServiceAccount %q, labels changed %s; intervals %v",
			known, pod.Selector, pod.ServiceAccount, pod.Changed.Format(time.RFC3339), tc.tl.Intervals(tok.Pod, tok.ClientID))
		klog.InfoS("VIOLATION", "rule", v.Rule, "detail", v.Detail)
		tc.rep.Violations = append(tc.rep.Violations, *v)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	tc.maxHeap = max(tc.maxHeap, ms.HeapInuse)
}

func (tc *tokenChecker) loop(ctx context.Context) {
	for {
		// Results are checked a little after they arrive, so the watch has seen the changes
		// that came before them.
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
		tc.drain(ctx, false)
	}
}

func armCalls(sb *sandbox.Sandbox) int64 {
	return sb.Emulator.Count(emulator.CounterKey{Service: emulator.ServiceARM})
}

// runChaos runs one whole chaos run and returns its report.
func runChaos(ctx context.Context, o options, log logr.Logger) (*chaos.Report, error) {
	faults, err := chaos.NewSchedule(o.seed, o.duration, o.intensity)
	if err != nil {
		return nil, err
	}
	sb, err := sandbox.Start(ctx, sandboxOptions(o, log))
	if err != nil {
		return nil, fmt.Errorf("starting the sandbox: %w", err)
	}
	defer func() {
		if err := sb.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "chaos: stopping the sandbox left something behind: %v\n", err)
		}
	}()
	dyn, err := dynamic.NewForConfig(sb.Config)
	if err != nil {
		return nil, err
	}
	w := newWatcher(dyn)
	if err := w.start(ctx, sb.Client); err != nil {
		return nil, err
	}
	// Identities on the VMs before the workload are ones MIC never owned: they must stay.
	untouched, err := vmIdentities(sb)
	if err != nil {
		return nil, err
	}
	crc, err := sb.CRClient()
	if err != nil {
		return nil, err
	}
	wl := newWorkload(sb, crc, w, o.seed)
	if err := wl.setup(ctx); err != nil {
		return nil, err
	}
	fed, err := sb.Emulator.Identity(azFederated)
	if err != nil {
		return nil, err
	}
	rep := &chaos.Report{Seed: o.seed, Started: time.Now(), Duration: chaos.Duration(o.duration), Intensity: o.intensity,
		Grace: chaos.Duration(o.grace), Settle: chaos.Duration(o.settle), Faults: faults, FaultsByKind: chaos.CountByKind(faults)}
	tc := &tokenChecker{sb: sb, w: w, tl: w.tl, grace: o.grace, fedID: fed.ClientID, rep: rep, lastToken: map[types.NamespacedName]time.Time{}}
	checkCtx, stopCheck := context.WithCancel(ctx)
	defer stopCheck()
	go tc.loop(checkCtx)

	start := time.Now()
	arm0 := armCalls(sb)
	runCtx, stopRun := context.WithDeadline(ctx, start.Add(o.duration))
	defer stopRun()
	go wl.run(runCtx, o.churn)
	mem := &memSampler{sb: sb}
	go mem.run(checkCtx, start, max(2*time.Second, o.duration/30))
	inj := &injector{sb: sb, w: w, crc: crc}
	inj.run(runCtx, start, faults)
	<-runCtx.Done()
	rep.ARMPerMinChaos = float64(armCalls(sb)-arm0) / o.duration.Minutes()
	inj.wg.Wait()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}

	fmt.Fprintf(os.Stderr, "chaos: churn and faults over; settling (up to %s), then %s for every bound pod's token\n", o.settle, o.tokenBound)
	lastEnd := time.Now() // churn has stopped; every fault ended at least a fifth of the run ago
	deadline := time.Now().Add(o.settle)
	for {
		ok, why, err := w.converged(ctx)
		if err == nil && ok {
			rep.SettledAfter = chaos.Duration(time.Since(lastEnd))
			break
		}
		if time.Now().After(deadline) {
			rep.Stuck = append(rep.Stuck, chaos.Violation{Rule: chaos.RuleStuck, Detail: fmt.Sprintf("MIC had not converged %s after the run: %s (%v)", o.settle, why, err)})
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The quiet baseline: ARM calls with no churn and no faults, while pods keep refreshing.
	armIdle := armCalls(sb)
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(o.tokenBound):
	}
	rep.ARMPerMinQuiet = float64(armCalls(sb)-armIdle) / o.tokenBound.Minutes()
	if err := finalChecks(ctx, o, sb, w, tc, wl, inj, untouched); err != nil {
		// An unreachable cluster at the end is a finding too: report it instead of nothing.
		rep.Stuck = append(rep.Stuck, chaos.Violation{Rule: chaos.RuleStuck, Detail: "the final checks could not run: " + err.Error()})
		rep.Finish()
	}
	rep.Memory = mem.series()
	rep.Finish() // again: the memory trend reads the whole series
	return rep, nil
}

// finalChecks fills the end-of-run part of the report.
func finalChecks(ctx context.Context, o options, sb *sandbox.Sandbox, w *watcher, tc *tokenChecker, wl *workload, inj *injector, untouched map[string]chaos.Set) error {
	tc.drain(ctx, true)
	rep := tc.rep
	world, since := w.snapshot()
	have, err := vmIdentities(sb)
	if err != nil {
		return err
	}
	rep.Leaked, rep.Missing = chaos.CheckVMs(have, chaos.Needed(world, nodeResources(sb)), untouched)
	aais, err := w.assignments(ctx, sb.Client)
	if err != nil {
		return err
	}
	rep.Stuck = chaos.StuckAssignments(aais, func(k types.NamespacedName) bool { _, ok := world.Pods[k]; return ok })
	tc.mu.Lock()
	rep.NoToken = chaos.CheckFreshTokens(world, since, tc.lastToken, time.Now(), o.tokenBound)
	rep.MaxHeapInUseMiB = float64(tc.maxHeap) / (1 << 20)
	tc.mu.Unlock()
	rep.Workload = wl.Actions()
	inj.mu.Lock()
	var took []time.Duration
	for _, r := range inj.recovery {
		took = append(took, time.Duration(r.Took))
	}
	rep.Recovery, rep.RecoveryPoints = chaos.Summarise(took), inj.recovery
	rep.Notes = append(rep.Notes, inj.notes...)
	inj.mu.Unlock()
	for _, c := range sb.MIC {
		rep.MICRestarts += c.Restarts()
	}
	for _, n := range sb.Nodes {
		if n.NMI != nil {
			rep.NMIRestarts += n.NMI.Restarts()
		}
	}
	rep.Finish()
	return nil
}
