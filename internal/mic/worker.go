package mic

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// groupRun is one reconciliation of one VM/VMSS.
type groupRun struct {
	c     *Controller
	key   string
	res   cloud.Resource
	snap  *snapshot
	known cloud.Identities
	fresh bool // known was read from ARM in this run
	// failed maps identities whose assignment failed in this run (or are held) to the reason.
	failed map[string]string
	// notRemoved are identities whose removal failed: their AAIs stay until it succeeds.
	notRemoved map[string]bool
	requeue    time.Duration
	tally      assignTally
}

func (r *groupRun) after(d time.Duration) {
	if d > 0 && (r.requeue == 0 || d < r.requeue) {
		r.requeue = d
	}
}

// process reconciles one VM/VMSS (or the unresolved group) against the latest snapshot.
func (c *Controller) process(ctx context.Context, key string) (time.Duration, error) {
	snap := c.snap.Load()
	if snap == nil {
		return 0, nil
	}
	r := &groupRun{c: c, key: key, res: snap.res[key], snap: snap, failed: map[string]string{}, notRemoved: map[string]bool{}}
	defer r.report()
	var want []*desired.AAI
	var ids map[string]string
	if g := snap.st.Groups[key]; g != nil {
		want, ids = g.AAIs, g.Identities
	}
	have := c.ov.apply(snap.have[key], func(a *aadv1.AzureAssignedIdentity) bool {
		c.mu.Lock()
		n := c.nodeRes[a.Spec.NodeName]
		c.mu.Unlock()
		if n.Resource.IsZero() {
			return key == desired.UnresolvedGroup
		}
		return n.Resource.Key() == key
	})
	ch := desired.Diff(want, have)
	log := c.log.WithValues("resource", r.res.String())

	var err error
	var plan desired.Plan
	if key != desired.UnresolvedGroup {
		plan, err = r.planARM(ctx, ids, have)
		if err != nil {
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
	// apply, running beside the writes, changes r.known and r.failed: the writes use copies taken
	// before it starts.
	known0, failed0 := r.known, maps.Clone(r.failed)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		nowErr = r.writeNew(ctx, now, func(a *desired.AAI) aadv1.AssignedIdentityState { return r.stateWith(a, known0, failed0) })
	}()
	if !plan.Empty() {
		armErr = r.apply(ctx, plan)
		armTook = time.Since(start)
		// The gauge follows the quarantine as soon as ARM answered, not at the next planning
		// pass (which needs an event and may be far off).
		c.m.Quarantined.Set(float64(c.q.size()))
	}
	wg.Wait()
	if nowErr != nil {
		return 0, nowErr
	}
	if err := r.writeNew(ctx, later, r.stateFor); err != nil {
		return 0, err
	}
	written := time.Since(start)
	if err := r.promote(ctx, ch, plan); err != nil {
		return 0, err
	}
	if err := r.release(ctx, ch.Delete); err != nil {
		return 0, err
	}
	if deletedWhileWanted(want, ch.Delete) {
		// Someone deleted an object that is still desired: once it is gone (its delete event is
		// MIC's own and starts no pass), it must be created again.
		r.after(10 * time.Millisecond)
	}
	if !plan.Empty() || !ch.Empty() {
		log.V(1).Info("reconciled", "added", len(plan.Add), "removed", len(plan.Remove), "created", len(ch.Create),
			"updated", len(ch.Update), "deleted", len(ch.Delete), "arm", armTook, "written", written, "total", time.Since(start))
	}
	if armErr != nil {
		log.Error(armErr, "changing identities on the VM/VMSS failed")
		return 0, armErr
	}
	return r.requeue, nil
}

func (c *Controller) gate(sub, kind string) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if until, ok := c.gates[sub+"/"+kind]; ok {
		if d := time.Until(until); d > 0 {
			return d
		}
		delete(c.gates, sub+"/"+kind)
	}
	return 0
}

func (c *Controller) throttled(sub, kind string, retryAfter time.Duration) time.Duration {
	if retryAfter <= 0 {
		retryAfter = 10 * time.Second
	}
	c.mu.Lock()
	c.gates[sub+"/"+kind] = time.Now().Add(retryAfter)
	c.mu.Unlock()
	c.log.Info("ARM throttled MIC; pausing this kind of call for the subscription", "subscription", sub, "kind", kind, "retryAfter", retryAfter)
	return retryAfter
}

// read GETs the resource's identities, honouring a Retry-After gate.
func (r *groupRun) read(ctx context.Context) (bool, error) {
	c := r.c
	if d := c.gate(r.res.SubscriptionID, "read"); d > 0 {
		r.after(d)
		return false, nil
	}
	ids, err := c.cloud.Get(ctx, r.res)
	if err != nil {
		var ce *cloud.Error
		if errors.As(err, &ce) && errors.Is(err, cloud.ErrThrottled) {
			r.after(c.throttled(r.res.SubscriptionID, "read", ce.RetryAfter))
			return false, nil
		}
		r.warnAll(fmt.Sprintf("reading %s from ARM failed: %v; check that the VM/VMSS exists and MIC has Virtual Machine Contributor on it", r.res, err))
		return false, fmt.Errorf("reading identities of %s: %w", r.res, err)
	}
	c.mu.Lock()
	c.known[r.key] = &knownState{ids: ids}
	c.mu.Unlock()
	r.known, r.fresh = ids, true
	return true, nil
}

// planARM decides the identity change, reading ARM only when the last known state is missing
// or stale, or a change is about to be sent (so the PATCH type never drops an identity someone
// else added meanwhile).
func (r *groupRun) planARM(ctx context.Context, desiredIDs map[string]string, have []*aadv1.AzureAssignedIdentity) (desired.Plan, error) {
	c := r.c
	owned, err := c.own.get(ctx, r.res)
	if err != nil {
		return desired.Plan{}, err
	}
	c.mu.Lock()
	k := c.known[r.key]
	c.mu.Unlock()
	inherited := desired.Inherited(have, owned)
	if len(desiredIDs) == 0 && len(owned) == 0 && len(inherited) == 0 {
		return desired.Plan{}, nil
	}
	if k == nil || k.stale {
		ok, err := r.read(ctx)
		if err != nil || !ok {
			return desired.Plan{}, err
		}
	} else {
		r.known = k.ids
	}
	if err := r.adopt(ctx, inherited, owned); err != nil {
		return desired.Plan{}, err
	}
	in := desired.PlanInput{Desired: desiredIDs, Owned: owned, Immutable: c.imm, Current: r.known,
		Hold: func(id string) bool {
			h, why := c.q.held(r.key, id)
			if h {
				r.failed[id] = why
			}
			return h
		}}
	plan := desired.PlanIdentities(in)
	if !plan.Empty() && !r.fresh {
		ok, err := r.read(ctx)
		if err != nil || !ok {
			return desired.Plan{}, err
		}
		in.Current = r.known
		plan = desired.PlanIdentities(in)
	}
	if len(plan.Held) > 0 {
		var soonest time.Duration
		for _, id := range plan.Held {
			until := c.q.untilOf(r.key, id)
			if d := time.Until(until); d > 0 && (soonest == 0 || d < soonest) {
				soonest = d
			}
		}
		r.after(soonest + 10*time.Millisecond)
	}
	// Identities MIC owned that are gone (removed out of band) and no longer wanted: forget them.
	var gone []string
	for id := range owned {
		if _, want := desiredIDs[id]; !want && !r.known.Has(id) {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 && r.fresh {
		if err := c.own.change(ctx, r.res, nil, gone); err != nil {
			return desired.Plan{}, err
		}
	}
	if !plan.Empty() {
		add := map[string]string{}
		for _, id := range plan.Add {
			add[id] = desiredIDs[id]
		}
		// Recorded before the PATCH: a crash in between must not leave an identity MIC forgot.
		if err := c.own.change(ctx, r.res, add, nil); err != nil {
			return desired.Plan{}, err
		}
	}
	return plan, nil
}

// adopt records as MIC's own the identities an earlier MIC (aad-pod-identity's, before the
// migration) assigned: their AAIs, which MIC did not write, say so. Without this they would stay
// on the VM/VMSS forever after their pods are gone. Identities nobody's AAI names stay protected.
func (r *groupRun) adopt(ctx context.Context, inherited, owned map[string]string) error {
	add := map[string]string{}
	for id, clientID := range inherited {
		if r.known.Has(id) {
			add[id] = clientID
			owned[id] = clientID
		}
	}
	if len(add) == 0 {
		return nil
	}
	r.c.log.Info("adopting identities an earlier MIC assigned (their AzureAssignedIdentities were not written by this MIC); they are removed when no pod needs them",
		"resource", r.res.String(), "identities", slices.Sorted(maps.Keys(add)))
	return r.c.own.change(ctx, r.res, add, nil)
}

// apply sends the plan in chunks. Identities ARM refuses by name are quarantined and the rest
// retried at once; throttling pauses the subscription's writes until Retry-After.
func (r *groupRun) apply(ctx context.Context, plan desired.Plan) error {
	c := r.c
	if d := c.gate(r.res.SubscriptionID, "write"); d > 0 {
		r.after(d)
		for _, id := range plan.Add {
			r.failed[id] = "ARM throttled MIC; waiting for Retry-After"
		}
		for _, id := range plan.Remove {
			r.notRemoved[id] = true
		}
		return nil
	}
	for _, chunk := range desired.Chunk(plan, c.o.ChunkSize) {
		for attempt := 0; len(chunk.Add)+len(chunk.Remove) > 0; attempt++ {
			reported, err := c.cloud.Update(ctx, r.res, cloud.Update{Add: chunk.Add, Remove: chunk.Remove, Current: r.known})
			if err == nil {
				r.applied(ctx, chunk, reported)
				break
			}
			var ce *cloud.Error
			errors.As(err, &ce)
			switch {
			case errors.Is(err, cloud.ErrIdentity) && attempt <= len(plan.Add)+len(plan.Remove):
				bad := map[string]bool{}
				for _, id := range ce.Identities {
					bad[id] = true
				}
				var keepAdd []string
				for _, id := range chunk.Add {
					if bad[id] {
						// The reason is kept with the quarantine: later passes skip the identity
						// without calling ARM and report this same why-and-what-to-do.
						why := fmt.Sprintf("ARM refused identity %s on %s: %s %s. Check that the identity exists and that MIC's identity has the Managed Identity Operator role on it (and Virtual Machine Contributor on the VM/VMSS)",
							id, r.res, ce.Code, shorten(ce.Message))
						until := c.q.hold(r.key, id, why)
						r.failed[id] = fmt.Sprintf("%s; retried after %s", why, until.Format(time.RFC3339))
						r.after(time.Until(until) + 10*time.Millisecond)
					} else {
						keepAdd = append(keepAdd, id)
					}
				}
				keepRemove := slices.DeleteFunc(slices.Clone(chunk.Remove), func(id string) bool {
					if bad[id] {
						r.notRemoved[id] = true
					}
					return bad[id]
				})
				if len(keepAdd) == len(chunk.Add) && len(keepRemove) == len(chunk.Remove) {
					// The error named none of ours: treat as a plain failure.
					r.failChunk(chunk, err)
					return err
				}
				chunk = desired.Plan{Add: keepAdd, Remove: keepRemove}
				c.log.Info("ARM refused identities; retrying the others at once", "resource", r.res.String(), "refused", ce.Identities)
				continue
			case errors.Is(err, cloud.ErrThrottled):
				r.after(c.throttled(r.res.SubscriptionID, "write", ce.RetryAfter))
				r.failChunk(chunk, err)
				r.markStale()
				return nil
			case errors.Is(err, cloud.ErrStale):
				// Someone changed the identities since our read (the PATCH was conditional because
				// it would have dropped every user-assigned identity): read again and re-plan.
				r.failChunk(chunk, err)
				r.markStale()
				r.after(100 * time.Millisecond)
				return nil
			case errors.Is(err, cloud.ErrConflict) && ce != nil && ce.Code == "AnotherOperationInProgress":
				// Someone else's operation runs on the resource; come back shortly.
				r.failChunk(chunk, err)
				r.markStale()
				r.after(2 * time.Second)
				return nil
			default:
				r.failChunk(chunk, err)
				r.markStale()
				return fmt.Errorf("updating identities of %s: %w", r.res, err)
			}
		}
	}
	return nil
}

func shorten(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

func (r *groupRun) failChunk(chunk desired.Plan, err error) {
	for _, id := range chunk.Add {
		if _, ok := r.failed[id]; !ok {
			r.failed[id] = fmt.Sprintf("assigning to %s failed: %v", r.res, err)
		}
	}
	for _, id := range chunk.Remove {
		r.notRemoved[id] = true
	}
}

func (r *groupRun) markStale() {
	r.c.mu.Lock()
	if k := r.c.known[r.key]; k != nil {
		k.stale = true
	}
	r.c.mu.Unlock()
}

// applied records a successful PATCH in the known state (with the client IDs ARM reported in
// its response) and the ownership record.
func (r *groupRun) applied(ctx context.Context, chunk desired.Plan, reported cloud.Identities) {
	c := r.c
	next := cloud.Identities{SystemAssigned: r.known.SystemAssigned, UserAssigned: make(map[string]string, len(r.known.UserAssigned)+len(chunk.Add))}
	for k, v := range r.known.UserAssigned {
		next.UserAssigned[k] = v
	}
	for _, id := range chunk.Remove {
		delete(next.UserAssigned, id)
	}
	for _, id := range chunk.Add {
		next.UserAssigned[id] = ""
		c.q.release(r.key, id)
	}
	missing := takeReported(next, reported, chunk.Add)
	if missing {
		// Their AAIs stay Created until a read reports the client IDs: one read, shortly.
		r.after(500 * time.Millisecond)
	}
	r.known = next
	c.mu.Lock()
	c.known[r.key] = &knownState{ids: next, stale: missing}
	c.mu.Unlock()
	if len(chunk.Remove) > 0 {
		if err := c.own.change(ctx, r.res, nil, chunk.Remove); err != nil {
			// The identity is gone from ARM; a stale record entry is harmless (removal of an
			// absent identity is skipped) and is cleaned up on the next read.
			c.log.Error(err, "updating the ownership record after a removal")
		}
	}
}

// stateFor is the status an AAI for a should have now.
func (r *groupRun) stateFor(a *desired.AAI) aadv1.AssignedIdentityState {
	return r.stateWith(a, r.known, r.failed)
}

func (r *groupRun) stateWith(a *desired.AAI, known cloud.Identities, failed map[string]string) aadv1.AssignedIdentityState {
	if !a.NeedsAzure() {
		return aadv1.AssignedIDAssigned
	}
	if r.key != desired.UnresolvedGroup && known.Has(a.IdentityID()) {
		if _, bad := failed[a.IdentityID()]; !bad && checkClientID(a, r.res, known) == nil {
			return aadv1.AssignedIDAssigned
		}
	}
	return aadv1.AssignedIDCreated
}

func (r *groupRun) group(ctx context.Context) *errgroup.Group {
	g, _ := errgroup.WithContext(ctx)
	g.SetLimit(r.c.o.KubeWrites)
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
func (r *groupRun) writeNew(ctx context.Context, ch desired.Changes, stateOf func(*desired.AAI) aadv1.AssignedIdentityState) error {
	g := r.group(ctx)
	for _, a := range ch.Create {
		g.Go(func() error { return r.create(ctx, a, stateOf(a)) })
	}
	for _, p := range ch.Update {
		g.Go(func() error { return r.update(ctx, p.Want, p.Have, stateOf(p.Want)) })
	}
	return g.Wait()
}

// promote moves AAIs to Assigned once ARM confirmed, and warns about the ones that cannot be.
func (r *groupRun) promote(ctx context.Context, ch desired.Changes, plan desired.Plan) error {
	g := r.group(ctx)
	todo := make([]desired.Pair, 0, len(ch.Keep)+len(ch.Create)+len(ch.Update))
	todo = append(todo, ch.Keep...)
	for _, a := range ch.Create {
		todo = append(todo, desired.Pair{Want: a})
	}
	todo = append(todo, ch.Update...)
	warned := map[string]bool{}
	for _, p := range todo {
		want := r.stateFor(p.Want)
		cur := r.c.written(p.Want.Key, p.Have)
		if cur == nil {
			continue
		}
		if cur.Status.Status == aadv1.AssignedIDCreated && want == aadv1.AssignedIDAssigned {
			g.Go(func() error { return r.setStatus(ctx, p.Want, cur, aadv1.AssignedIDAssigned) })
			continue
		}
		if cur.Status.Status == aadv1.AssignedIDAssigned && want == aadv1.AssignedIDCreated && r.demote(p.Want) {
			// Written Assigned by an earlier MIC (or before the check existed) for a clientID ARM
			// contradicts: take it back, and warn below.
			have := cur
			g.Go(func() error { return r.setStatus(ctx, p.Want, have, aadv1.AssignedIDCreated) })
			cur = cur.DeepCopy()
			cur.Status.Status = aadv1.AssignedIDCreated
		}
		if want == aadv1.AssignedIDCreated && cur.Status.Status == aadv1.AssignedIDCreated {
			id := p.Want.IdentityID()
			why := r.failed[id]
			if why == "" {
				if ce := checkClientID(p.Want, r.res, r.known); ce != nil {
					why = ce.Error()
				}
			}
			if why == "" && r.key == desired.UnresolvedGroup {
				why = fmt.Sprintf("node %s of this pod maps to no Azure VM or VMSS yet", p.Want.NodeName)
			}
			if why == "" {
				if w := r.c.q.reason(r.key, id); w != "" {
					why = w
				}
			}
			if why != "" && !warned[p.Want.Key.String()] {
				warned[p.Want.Key.String()] = true
				r.c.warnPair(p.Want, r.snap, "assignment failed: "+why)
			}
		}
	}
	return g.Wait()
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
func (r *groupRun) release(ctx context.Context, dels []*aadv1.AzureAssignedIdentity) error {
	g := r.group(ctx)
	for _, h := range dels {
		if id := desired.IdentityIDOf(h); id != "" && r.notRemoved[id] {
			continue
		}
		g.Go(func() error { return r.c.remove(ctx, h) })
	}
	return g.Wait()
}

// warnAll puts a Warning event on every binding used on this resource.
func (r *groupRun) warnAll(msg string) {
	g := r.snap.st.Groups[r.key]
	if g == nil {
		return
	}
	seen := map[string]bool{}
	for _, a := range g.AAIs {
		k := a.Binding.Namespace + "/" + a.Binding.Name
		if !seen[k] {
			seen[k] = true
			r.c.rec.Eventf(a.Binding, nil, corev1.EventTypeWarning, "AssignmentFailed", "Assign", "%s", msg)
		}
	}
}

func (c *Controller) warnPair(a *desired.AAI, s *snapshot, msg string) {
	k := "warn|" + a.Key.String() + "|" + msg
	c.mu.Lock()
	seen := c.reported[k]
	c.reported[k] = true
	c.mu.Unlock()
	if seen {
		return
	}
	c.log.Info(msg, "pod", a.PodNamespace+"/"+a.PodName, "identity", a.Identity.Namespace+"/"+a.Identity.Name)
	c.rec.Eventf(refObject("Pod", desired.Key{Namespace: a.PodNamespace, Name: a.PodName}, s.pods[desired.Key{Namespace: a.PodNamespace, Name: a.PodName}]),
		nil, corev1.EventTypeWarning, "AssignmentFailed", "Assign", "identity %s/%s: %s", a.Identity.Namespace, a.Identity.Name, msg)
	c.rec.Eventf(a.Binding, nil, corev1.EventTypeWarning, "AssignmentFailed", "Assign", "pod %s/%s, identity %s: %s", a.PodNamespace, a.PodName, a.Identity.Name, msg)
}

// written returns the freshest object MIC knows for k: its own last write, else have.
func (c *Controller) written(k desired.Key, have *aadv1.AzureAssignedIdentity) *aadv1.AzureAssignedIdentity {
	c.ov.mu.Lock()
	defer c.ov.mu.Unlock()
	if w, ok := c.ov.m[k]; ok {
		if w.obj == nil {
			return nil
		}
		if have == nil || rvOf(have) < w.rv {
			return w.obj
		}
	}
	return have
}

// assigned records that a's pod got its identity: assignment latency, a Normal event on the pod,
// and a count for the binding's event at the end of the run.
func (r *groupRun) assigned(a *desired.AAI) {
	c := r.c
	c.mu.Lock()
	t, ok := c.firstSeen[a.Key]
	delete(c.firstSeen, a.Key)
	c.mu.Unlock()
	if ok {
		c.m.AssignLatency.Observe(time.Since(t).Seconds())
	}
	pk := desired.Key{Namespace: a.PodNamespace, Name: a.PodName}
	c.rec.Eventf(refObject("Pod", pk, r.snap.pods[pk]), nil, corev1.EventTypeNormal, "IdentityAssigned", "Assign",
		"identity %s/%s assigned", a.Identity.Namespace, a.Identity.Name)
	r.tally.add(a)
}

// assignTally collects, per binding, the pods one run assigned, for one Normal event per binding
// and run (a binding may select thousands of pods; each pod has its own event too).
type assignTally struct {
	mu sync.Mutex
	by map[desired.Key]*tallied
}

type tallied struct {
	binding  *aadv1.AzureIdentityBinding
	identity string
	pods     []string
}

func (t *assignTally) add(a *desired.AAI) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := desired.Key{Namespace: a.Binding.Namespace, Name: a.Binding.Name}
	if t.by == nil {
		t.by = map[desired.Key]*tallied{}
	}
	e := t.by[k]
	if e == nil {
		e = &tallied{binding: a.Binding, identity: a.Identity.Namespace + "/" + a.Identity.Name}
		t.by[k] = e
	}
	e.pods = append(e.pods, a.PodNamespace+"/"+a.PodName)
}

// report puts the Normal events on the bindings.
func (r *groupRun) report() {
	const shown = 10
	where := r.res.String()
	if r.key == desired.UnresolvedGroup {
		where = "their nodes"
	}
	r.tally.mu.Lock()
	defer r.tally.mu.Unlock()
	for _, e := range r.tally.by {
		slices.Sort(e.pods)
		list := strings.Join(e.pods[:min(len(e.pods), shown)], ", ")
		if len(e.pods) > shown {
			list += fmt.Sprintf(" and %d more", len(e.pods)-shown)
		}
		r.c.rec.Eventf(e.binding, nil, corev1.EventTypeNormal, "IdentityAssigned", "Assign",
			"identity %s assigned for %d pod(s) on %s: %s", e.identity, len(e.pods), where, list)
	}
}

// wrote books a successful write of obj: duration and count, the overlay, and the assignment
// when obj is Assigned.
func (r *groupRun) wrote(a *desired.AAI, obj *aadv1.AzureAssignedIdentity, start time.Time, d prometheus.Observer, n prometheus.Counter) {
	d.Observe(time.Since(start).Seconds())
	n.Inc()
	r.c.ov.put(obj)
	if obj.Status.Status == aadv1.AssignedIDAssigned {
		r.assigned(a)
	}
}

func (r *groupRun) create(ctx context.Context, a *desired.AAI, state aadv1.AssignedIdentityState) error {
	c := r.c
	obj := a.Object(state)
	start := time.Now()
	err := c.c.Create(ctx, obj)
	if apierrors.IsAlreadyExists(err) {
		// The cache lagged behind someone's write: update the existing object instead.
		cur := &aadv1.AzureAssignedIdentity{}
		if gerr := c.api.Get(ctx, client.ObjectKeyFromObject(obj), cur); gerr != nil {
			return fmt.Errorf("reading AzureAssignedIdentity %s after AlreadyExists: %w", a.Key, gerr)
		}
		return r.update(ctx, a, cur, state)
	}
	if err != nil {
		c.m.KubeErrors.WithLabelValues("assigned_identity_addition").Inc()
		if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
			// Namespace gone or terminating: nothing to create.
			c.log.V(1).Info("cannot create AzureAssignedIdentity", "name", a.Key.String(), "error", err.Error())
			return nil
		}
		return fmt.Errorf("creating AzureAssignedIdentity %s: %w", a.Key, err)
	}
	r.wrote(a, obj, start, c.m.AddDuration, c.m.AddCount)
	return nil
}

func (r *groupRun) update(ctx context.Context, a *desired.AAI, have *aadv1.AzureAssignedIdentity, state aadv1.AssignedIdentityState) error {
	c := r.c
	for attempt := 0; ; attempt++ {
		obj := a.Object(state)
		obj.ResourceVersion = have.ResourceVersion
		obj.Annotations = maps.Clone(have.Annotations)
		if obj.Annotations == nil {
			obj.Annotations = map[string]string{}
		}
		obj.Annotations[desired.WrittenByAnnotation] = desired.WrittenByValue
		obj.Finalizers = have.Finalizers
		if !slices.Contains(obj.Finalizers, aadv1.AssignedIdentityFinalizer) {
			obj.Finalizers = append(slices.Clone(obj.Finalizers), aadv1.AssignedIdentityFinalizer)
		}
		start := time.Now()
		err := c.c.Update(ctx, obj)
		if apierrors.IsConflict(err) && attempt == 0 {
			cur := &aadv1.AzureAssignedIdentity{}
			if gerr := c.api.Get(ctx, client.ObjectKeyFromObject(obj), cur); gerr != nil {
				return fmt.Errorf("re-reading AzureAssignedIdentity %s after a conflict: %w", a.Key, gerr)
			}
			have = cur
			continue
		}
		if apierrors.IsNotFound(err) {
			return nil // deleted meanwhile; the next pass re-creates it
		}
		if err != nil {
			c.m.KubeErrors.WithLabelValues("assigned_identity_update").Inc()
			return fmt.Errorf("updating AzureAssignedIdentity %s: %w", a.Key, err)
		}
		r.wrote(a, obj, start, c.m.UpdDuration, c.m.UpdCount)
		return nil
	}
}

func (r *groupRun) setStatus(ctx context.Context, a *desired.AAI, have *aadv1.AzureAssignedIdentity, state aadv1.AssignedIdentityState) error {
	c := r.c
	obj := have.DeepCopy()
	obj.Status.Status = state
	obj.Status.AvailableReplicas = 1
	start := time.Now()
	if err := c.c.Patch(ctx, obj, client.MergeFrom(have)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		c.m.KubeErrors.WithLabelValues("update_azure_assigned_identity_status").Inc()
		return fmt.Errorf("setting AzureAssignedIdentity %s to %s: %w", a.Key, state, err)
	}
	r.wrote(a, obj, start, c.m.UpdDuration, c.m.UpdCount)
	return nil
}

// remove marks an AAI Unassigned and drops MIC's finalizer in one write, then deletes it.
func (c *Controller) remove(ctx context.Context, have *aadv1.AzureAssignedIdentity) error {
	start := time.Now()
	obj := have.DeepCopy()
	obj.Status.Status = aadv1.AssignedIDUnassigned
	obj.Finalizers = slices.DeleteFunc(obj.Finalizers, func(f string) bool { return f == aadv1.AssignedIdentityFinalizer })
	k := desired.Key{Namespace: have.Namespace, Name: have.Name}
	if err := c.c.Patch(ctx, obj, client.MergeFrom(have)); err != nil {
		if apierrors.IsNotFound(err) {
			c.ov.deleted(k, rvOf(have))
			return nil
		}
		c.m.KubeErrors.WithLabelValues("assigned_identity_deletion").Inc()
		return fmt.Errorf("releasing AzureAssignedIdentity %s: %w", k, err)
	}
	if obj.DeletionTimestamp == nil {
		if err := c.c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
			c.m.KubeErrors.WithLabelValues("assigned_identity_deletion").Inc()
			return fmt.Errorf("deleting AzureAssignedIdentity %s: %w", k, err)
		}
	}
	c.ov.deleted(k, rvOf(obj))
	c.m.DelDuration.Observe(time.Since(start).Seconds())
	c.m.DelCount.Inc()
	c.log.V(1).Info("released", "assignedIdentity", k.String())
	return nil
}
