package mic

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/go-logr/logr"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/cloud"
	"github.com/podidentity/podidentity/internal/mic/desired"
)

// armStep is the ARM part of one reconcile of one VM/VMSS: prepare (read ARM if needed, adopt,
// plan, record ownership), then apply (one PATCH per chunk). Its results are what it knows of
// the resource afterwards and which identities failed.
type armStep struct {
	cloud     cloud.Compute
	gates     *gates
	known     *armView
	own       *ownership
	q         *quarantine
	imm       map[string]bool
	chunkSize int
	log       logr.Logger
	notes     *notifier
	aais      []*desired.AAI // the resource's desired AAIs, whose bindings get a whole-resource failure
	key       cloud.ResourceKey
	res       cloud.Resource
	wait      *requeue

	// current is the resource's identity block as last known (fresh: read in this run).
	current cloud.Identities
	fresh   bool
	// failed maps identities whose assignment failed in this run (or are held) to the reason.
	failed map[string]string
	// notRemoved are identities whose removal failed: their AAIs stay until it succeeds.
	notRemoved map[string]bool
}

// prepare decides the identity change: it plans on the last known state, and reads ARM first
// when that is missing or stale or would lead to a change (a PATCH is always based on a fresh
// read, so that its identity type never drops an identity someone else added meanwhile).
// Ownership is recorded before the PATCH: a crash in between must not leave an identity MIC
// forgot.
func (s *armStep) prepare(ctx context.Context, desiredIDs map[string]string, have []*aadv1.AzureAssignedIdentity) (desired.Plan, error) {
	s.failed, s.notRemoved = map[string]string{}, map[string]bool{}
	owned, err := s.own.get(ctx, s.res)
	if err != nil {
		return desired.Plan{}, err
	}
	inherited := desired.Inherited(have, owned)
	if len(desiredIDs) == 0 && len(owned) == 0 && len(inherited) == 0 {
		return desired.Plan{}, nil
	}
	in := desired.PlanInput{Desired: desiredIDs, Immutable: s.imm,
		Hold: func(id string) bool { h, _ := s.q.held(s.key, id); return h }}
	var ok bool
	s.current, ok = s.known.get(s.key)
	in.Current, in.Owned = s.current, union(owned, inherited)
	if !ok || desired.NeedsChange(in) {
		if read, err := s.read(ctx); err != nil || !read {
			return desired.Plan{}, err
		}
	}
	if err := s.adopt(ctx, inherited, owned); err != nil {
		return desired.Plan{}, err
	}
	in.Current, in.Owned = s.current, owned
	plan := desired.PlanIdentities(in)
	var soonest time.Duration
	for _, id := range plan.Held {
		s.failed[id] = s.q.reason(s.key, id)
		if d := time.Until(s.q.untilOf(s.key, id)); d > 0 && (soonest == 0 || d < soonest) {
			soonest = d
		}
	}
	if len(plan.Held) > 0 {
		s.wait.after(soonest + 10*time.Millisecond)
	}
	// Identities MIC owned that are gone (removed out of band) and no longer wanted: forget them.
	var gone []string
	for id := range owned {
		if _, want := desiredIDs[id]; !want && !s.current.Has(id) {
			gone = append(gone, id)
		}
	}
	if len(gone) > 0 && s.fresh {
		if err := s.own.change(ctx, s.res, nil, gone); err != nil {
			return desired.Plan{}, err
		}
	}
	if len(plan.Add) > 0 {
		add := make(map[string]string, len(plan.Add))
		for _, id := range plan.Add {
			add[id] = desiredIDs[id]
		}
		if err := s.own.change(ctx, s.res, add, nil); err != nil {
			return desired.Plan{}, err
		}
	}
	return plan, nil
}

func union(a, b map[string]string) map[string]string {
	if len(b) == 0 {
		return a
	}
	out := maps.Clone(a)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, b)
	return out
}

// read GETs the resource's identities, honouring a Retry-After gate (read=false: try later).
func (s *armStep) read(ctx context.Context) (read bool, err error) {
	if d := s.gates.closed(s.res.SubscriptionID, callRead); d > 0 {
		s.wait.after(d)
		return false, nil
	}
	ids, err := s.cloud.Get(ctx, s.res)
	if err != nil {
		var ce *cloud.Error
		if errors.As(err, &ce) && errors.Is(err, cloud.ErrThrottled) {
			s.wait.after(s.throttled(callRead, ce.RetryAfter))
			return false, nil
		}
		s.notes.failedAll(s.aais, fmt.Sprintf("reading %s from ARM failed: %v; check that the VM/VMSS exists and MIC has Virtual Machine Contributor on it", s.res, err))
		return false, fmt.Errorf("reading identities of %s: %w", s.res, err)
	}
	s.known.set(s.key, ids, false)
	s.current, s.fresh = ids, true
	return true, nil
}

func (s *armStep) throttled(kind callKind, retryAfter time.Duration) time.Duration {
	d := s.gates.close(s.res.SubscriptionID, kind, retryAfter)
	s.log.Info("ARM throttled MIC; pausing this kind of call for the subscription", "subscription", s.res.SubscriptionID, "kind", kind, "retryAfter", d)
	return d
}

// adopt records as MIC's own the identities an earlier MIC (aad-pod-identity's, before the
// migration) assigned: their AAIs, which MIC did not write, say so. Without this they would stay
// on the VM/VMSS forever after their pods are gone. Identities nobody's AAI names stay protected.
func (s *armStep) adopt(ctx context.Context, inherited, owned map[string]string) error {
	add := map[string]string{}
	for id, clientID := range inherited {
		if s.current.Has(id) {
			add[id] = clientID
			owned[id] = clientID
		}
	}
	if len(add) == 0 {
		return nil
	}
	s.log.Info("adopting identities an earlier MIC assigned (their AzureAssignedIdentities were not written by this MIC); they are removed when no pod needs them",
		"identities", slices.Sorted(maps.Keys(add)))
	return s.own.change(ctx, s.res, add, nil)
}

// apply sends the plan in chunks. Identities ARM refuses by name are quarantined and the rest
// retried at once; throttling pauses the subscription's writes until Retry-After.
func (s *armStep) apply(ctx context.Context, plan desired.Plan) error {
	if d := s.gates.closed(s.res.SubscriptionID, callWrite); d > 0 {
		s.wait.after(d)
		for _, id := range plan.Add {
			s.failed[id] = "ARM throttled MIC; waiting for Retry-After"
		}
		for _, id := range plan.Remove {
			s.notRemoved[id] = true
		}
		return nil
	}
	for _, chunk := range desired.Chunk(plan, s.chunkSize) {
		for attempt := 0; len(chunk.Add)+len(chunk.Remove) > 0; attempt++ {
			reported, err := s.cloud.Update(ctx, s.res, cloud.Update{Add: chunk.Add, Remove: chunk.Remove, Current: s.current})
			if err == nil {
				s.applied(ctx, chunk, reported)
				break
			}
			var ce *cloud.Error
			errors.As(err, &ce)
			switch {
			case errors.Is(err, cloud.ErrIdentity) && attempt <= len(plan.Add)+len(plan.Remove):
				rest, named := s.refused(chunk, ce)
				if !named {
					// The error named none of ours: treat as a plain failure.
					s.failChunk(chunk, err)
					return err
				}
				chunk = rest
				s.log.Info("ARM refused identities; retrying the others at once", "refused", ce.Identities)
				continue
			case errors.Is(err, cloud.ErrThrottled):
				s.wait.after(s.throttled(callWrite, ce.RetryAfter))
				s.failChunk(chunk, err)
				s.known.markStale(s.key)
				return nil
			case errors.Is(err, cloud.ErrStale):
				// Someone changed the identities since our read (the PATCH was conditional because
				// it would have dropped every user-assigned identity): read again and re-plan.
				s.failChunk(chunk, err)
				s.known.markStale(s.key)
				s.wait.after(100 * time.Millisecond)
				return nil
			case errors.Is(err, cloud.ErrConflict) && ce != nil && ce.Code == "AnotherOperationInProgress":
				// Someone else's operation runs on the resource; come back shortly.
				s.failChunk(chunk, err)
				s.known.markStale(s.key)
				s.wait.after(2 * time.Second)
				return nil
			default:
				s.failChunk(chunk, err)
				s.known.markStale(s.key)
				return fmt.Errorf("updating identities of %s: %w", s.res, err)
			}
		}
	}
	return nil
}

// refused quarantines the identities of chunk that ce names and returns the rest; named is
// false when ce names none of them.
func (s *armStep) refused(chunk desired.Plan, ce *cloud.Error) (rest desired.Plan, named bool) {
	bad := map[string]bool{}
	for _, id := range ce.Identities {
		bad[id] = true
	}
	for _, id := range chunk.Add {
		if !bad[id] {
			rest.Add = append(rest.Add, id)
			continue
		}
		// The reason is kept with the quarantine: later passes skip the identity without
		// calling ARM and report this same why-and-what-to-do.
		why := fmt.Sprintf("ARM refused identity %s on %s: %s %s. Check that the identity exists and that MIC's identity has the Managed Identity Operator role on it (and Virtual Machine Contributor on the VM/VMSS)",
			id, s.res, ce.Code, shorten(ce.Message))
		until := s.q.hold(s.key, id, why)
		s.failed[id] = fmt.Sprintf("%s; retried after %s", why, until.Format(time.RFC3339))
		s.wait.after(time.Until(until) + 10*time.Millisecond)
	}
	for _, id := range chunk.Remove {
		if bad[id] {
			s.notRemoved[id] = true
		} else {
			rest.Remove = append(rest.Remove, id)
		}
	}
	return rest, len(rest.Add) != len(chunk.Add) || len(rest.Remove) != len(chunk.Remove)
}

func shorten(s string) string {
	if len(s) > 300 {
		return s[:300] + "…"
	}
	return s
}

func (s *armStep) failChunk(chunk desired.Plan, err error) {
	for _, id := range chunk.Add {
		if _, ok := s.failed[id]; !ok {
			s.failed[id] = fmt.Sprintf("assigning to %s failed: %v", s.res, err)
		}
	}
	for _, id := range chunk.Remove {
		s.notRemoved[id] = true
	}
}

// applied records a successful PATCH in the known state (with the client IDs ARM reported in
// its response) and the ownership record.
func (s *armStep) applied(ctx context.Context, chunk desired.Plan, reported cloud.Identities) {
	next := cloud.Identities{SystemAssigned: s.current.SystemAssigned, UserAssigned: maps.Clone(s.current.UserAssigned)}
	if next.UserAssigned == nil {
		next.UserAssigned = map[string]string{}
	}
	for _, id := range chunk.Remove {
		delete(next.UserAssigned, id)
	}
	for _, id := range chunk.Add {
		next.UserAssigned[id] = ""
		s.q.release(s.key, id)
	}
	missing := takeReported(next, reported, chunk.Add)
	if missing {
		// Their AAIs stay Created until a read reports the client IDs: one read, shortly.
		s.wait.after(500 * time.Millisecond)
	}
	s.current = next
	s.known.set(s.key, next, missing)
	if len(chunk.Remove) > 0 {
		if err := s.own.change(ctx, s.res, nil, chunk.Remove); err != nil {
			// The identity is gone from ARM; a stale record entry is harmless (removal of an
			// absent identity is skipped) and is cleaned up on the next read.
			s.log.Error(err, "updating the ownership record after a removal")
		}
	}
}
