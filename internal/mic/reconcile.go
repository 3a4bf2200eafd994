package mic

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// resourceRun is one reconcile of one VM/VMSS, in one direction: diff the AAIs, let the ARM step
// read (when needed), plan and apply the identity change, and write every AAI once in its final
// state. The unresolved group (pods on nodes that map to no VM/VMSS) has no ARM step.
type resourceRun struct {
	in          groupInput
	snap        *snapshot
	log         logr.Logger
	notes       *notifier
	writer      *aaiWriter
	ov          *overlay
	q           *quarantine
	kubeWrites  int
	quarantined prometheus.Gauge
	arm         *armStep // nil for the unresolved group

	wait  requeue
	tally assignTally
}

// reconcile runs the reconcile and returns when to come back (0: only on the next change).
func (r *resourceRun) reconcile(ctx context.Context) (time.Duration, error) {
	defer r.reportTally()
	ch := desired.Diff(r.in.want, r.in.have)
	var plan desired.Plan
	if r.arm != nil {
		var err error
		if plan, err = r.arm.prepare(ctx, r.in.ids, r.in.have); err != nil {
			return 0, err
		}
	}
	// Each new or changed object is written once, in its final state: pairs ARM does not have to
	// act for are written at once, while ARM works (Assigned when the identity is there already);
	// pairs waiting for ARM are written when it answered (Assigned, or Created with a Warning
	// when it failed). Writing them as Created first would double the writes, and the apiserver's
	// write rate, not ARM, bounds how fast thousands of pods get their identities.
	now, later := ch, desired.Changes{}
	if len(plan.Add) > 0 {
		now, later = splitPending(ch, plan.Add)
	}
	var armErr, nowErr error
	var armTook time.Duration
	start := time.Now()
	// The ARM step, running beside the writes, changes what it knows and what failed: the writes
	// use copies taken before it starts.
	known0, failed0 := r.current()
	failed0 = maps.Clone(failed0)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		nowErr = r.writeNew(ctx, now, func(a *desired.AAI) aadv1.AssignedIdentityState { return r.stateWith(a, known0, failed0) })
	}()
	if !plan.Empty() {
		armErr = r.arm.apply(ctx, plan)
		armTook = time.Since(start)
		// The gauge follows the quarantine as soon as ARM answered, not at the next planning
		// pass (which needs an event and may be far off).
		r.quarantined.Set(float64(r.q.size()))
	}
	wg.Wait()
	if nowErr != nil {
		return 0, nowErr
	}
	if err := r.writeNew(ctx, later, r.stateFor); err != nil {
		return 0, err
	}
	written := time.Since(start)
	if err := r.promote(ctx, ch); err != nil {
		return 0, err
	}
	if err := r.release(ctx, ch.Delete); err != nil {
		return 0, err
	}
	if deletedWhileWanted(r.in.want, ch.Delete) {
		// Someone deleted an object that is still desired: once it is gone (its delete event is
		// MIC's own and starts no pass), it must be created again.
		r.wait.after(10 * time.Millisecond)
	}
	if !plan.Empty() || !ch.Empty() {
		r.log.V(1).Info("reconciled", "added", len(plan.Add), "removed", len(plan.Remove), "created", len(ch.Create),
			"updated", len(ch.Update), "deleted", len(ch.Delete), "arm", armTook, "written", written, "total", time.Since(start))
	}
	if armErr != nil {
		r.log.Error(armErr, "changing identities on the VM/VMSS failed")
		return 0, armErr
	}
	return r.wait.get(), nil
}

// current is what the ARM step knows now: the identities on the resource and those whose
// assignment failed (nothing for the unresolved group).
func (r *resourceRun) current() (cloud.Identities, map[string]string) {
	if r.arm == nil {
		return cloud.Identities{}, nil
	}
	return r.arm.current, r.arm.failed
}

// stateFor is the status an AAI for a should have now.
func (r *resourceRun) stateFor(a *desired.AAI) aadv1.AssignedIdentityState {
	known, failed := r.current()
	return r.stateWith(a, known, failed)
}

func (r *resourceRun) stateWith(a *desired.AAI, known cloud.Identities, failed map[string]string) aadv1.AssignedIdentityState {
	if !a.NeedsAzure() {
		return aadv1.AssignedIDAssigned
	}
	if r.arm != nil && known.Has(a.IdentityID()) {
		if _, bad := failed[a.IdentityID()]; !bad && checkClientID(a, r.in.res, known) == nil {
			return aadv1.AssignedIDAssigned
		}
	}
	return aadv1.AssignedIDCreated
}

func (r *resourceRun) group(ctx context.Context) *errgroup.Group {
	g, _ := errgroup.WithContext(ctx)
	g.SetLimit(r.kubeWrites)
	return g
}

// splitPending splits creates and updates into those that can be written now and those whose
// identity ARM is adding in this run.
func splitPending(ch desired.Changes, adding []string) (now, later desired.Changes) {
	pending := make(map[string]bool, len(adding))
	for _, id := range adding {
		pending[id] = true
	}
	waits := func(a *desired.AAI) bool { return a.NeedsAzure() && pending[a.IdentityID()] }
	now = desired.Changes{Keep: ch.Keep, Delete: ch.Delete}
	for _, a := range ch.Create {
		if waits(a) {
			later.Create = append(later.Create, a)
		} else {
			now.Create = append(now.Create, a)
		}
	}
	for _, p := range ch.Update {
		if waits(p.Want) {
			later.Update = append(later.Update, p)
		} else {
			now.Update = append(now.Update, p)
		}
	}
	return now, later
}

// writeNew creates missing AAIs and updates outdated ones, each in the state stateOf gives when
// its write starts.
func (r *resourceRun) writeNew(ctx context.Context, ch desired.Changes, stateOf func(*desired.AAI) aadv1.AssignedIdentityState) error {
	g := r.group(ctx)
	for _, a := range ch.Create {
		g.Go(func() error { return r.booked(a)(r.writer.create(ctx, a, stateOf(a))) })
	}
	for _, p := range ch.Update {
		g.Go(func() error { return r.booked(p.Want)(r.writer.update(ctx, p.Want, p.Have, stateOf(p.Want))) })
	}
	return g.Wait()
}

// booked returns the function that books a write of a's object: an Assigned one is an
// assignment (event, latency, tally).
func (r *resourceRun) booked(a *desired.AAI) func(*aadv1.AzureAssignedIdentity, error) error {
	return func(obj *aadv1.AzureAssignedIdentity, err error) error {
		if err == nil && obj != nil && obj.Status.Status == aadv1.AssignedIDAssigned {
			r.notes.assigned(a, r.snap.podUID(a))
			r.tally.add(a)
		}
		return err
	}
}

// promote moves AAIs to Assigned once ARM confirmed, and warns about the ones that cannot be.
func (r *resourceRun) promote(ctx context.Context, ch desired.Changes) error {
	g := r.group(ctx)
	todo := make([]desired.Pair, 0, len(ch.Keep)+len(ch.Create)+len(ch.Update))
	todo = append(todo, ch.Keep...)
	for _, a := range ch.Create {
		todo = append(todo, desired.Pair{Want: a})
	}
	todo = append(todo, ch.Update...)
	known, failed := r.current()
	warned := map[desired.Key]bool{}
	for _, p := range todo {
		want := r.stateWith(p.Want, known, failed)
		cur := r.ov.latest(p.Want.Key, p.Have)
		if cur == nil {
			continue
		}
		if cur.Status.Status == aadv1.AssignedIDCreated && want == aadv1.AssignedIDAssigned {
			g.Go(func() error { return r.booked(p.Want)(r.writer.setStatus(ctx, p.Want, cur, aadv1.AssignedIDAssigned)) })
			continue
		}
		if cur.Status.Status == aadv1.AssignedIDAssigned && want == aadv1.AssignedIDCreated && r.arm != nil && demotes(p.Want, r.in.res, known) {
			// Written Assigned by an earlier MIC (or before the check existed) for a clientID ARM
			// contradicts: take it back, and warn below.
			have := cur
			g.Go(func() error { _, err := r.writer.setStatus(ctx, p.Want, have, aadv1.AssignedIDCreated); return err })
			cur = cur.DeepCopy()
			cur.Status.Status = aadv1.AssignedIDCreated
		}
		if want == aadv1.AssignedIDCreated && cur.Status.Status == aadv1.AssignedIDCreated && !warned[p.Want.Key] {
			if why := r.whyNotAssigned(p.Want, known, failed); why != "" {
				warned[p.Want.Key] = true
				r.notes.failed(p.Want, r.snap.podUID(p.Want), "assignment failed: "+why)
			}
		}
	}
	return g.Wait()
}

// whyNotAssigned says why a's AAI stays Created ("" when it is just waiting).
func (r *resourceRun) whyNotAssigned(a *desired.AAI, known cloud.Identities, failed map[string]string) string {
	if r.arm == nil {
		return fmt.Sprintf("node %s of this pod maps to no Azure VM or VMSS yet", a.NodeName)
	}
	id := a.IdentityID()
	if why := failed[id]; why != "" {
		return why
	}
	if ce := checkClientID(a, r.in.res, known); ce != nil {
		return ce.Error()
	}
	return r.q.reason(r.in.key, id)
}

func deletedWhileWanted(want []*desired.AAI, dels []*aadv1.AzureAssignedIdentity) bool {
	var keys map[desired.Key]bool
	for _, h := range dels {
		if h.DeletionTimestamp == nil {
			continue
		}
		if keys == nil {
			keys = make(map[desired.Key]bool, len(want))
			for _, a := range want {
				keys[a.Key] = true
			}
		}
		if keys[desired.Key{Namespace: h.Namespace, Name: h.Name}] {
			return true
		}
	}
	return false
}

// release deletes AAIs that are no longer desired: Unassigned and finalizer removed in one
// write, then deleted. An AAI whose identity MIC failed to remove stays until removal works.
func (r *resourceRun) release(ctx context.Context, dels []*aadv1.AzureAssignedIdentity) error {
	g := r.group(ctx)
	for _, h := range dels {
		if id := desired.IdentityIDOf(h); id != "" && r.arm != nil && r.arm.notRemoved[id] {
			continue
		}
		g.Go(func() error { return r.writer.remove(ctx, h) })
	}
	return g.Wait()
}

// reportTally puts the run's Normal events on the bindings.
func (r *resourceRun) reportTally() {
	where := r.in.res.String()
	if r.arm == nil {
		where = "their nodes"
	}
	r.notes.assignedOn(&r.tally, where)
}
