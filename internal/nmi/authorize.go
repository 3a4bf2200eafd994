package nmi

import (
	"context"
	"fmt"
	"strings"
	"time"

	aadv1 "github.com/podidentity/podidentity/api/v1"
	"github.com/podidentity/podidentity/internal/binding"
	"github.com/podidentity/podidentity/internal/nmi/imdsreq"
)

// isMIC is the passthrough for MIC's own pods: in --MICNamespace and running as
// --mic-service-account. Upstream matched a ReplicaSet name prefix, which any pod can claim with
// an ownerReference of its own making; a ServiceAccount is granted by RBAC.
func (s *Server) isMIC(p *podInfo) bool {
	return s.cfg.MICServiceAccount != "" && strings.EqualFold(p.Namespace, s.cfg.MICNamespace) && p.ServiceAccount == s.cfg.MICServiceAccount
}

// tokenFor authorizes the request from current state, then answers from the cache or fetches.
// The grant is returned with errors too, when one was chosen, so that refusals can be reported on
// its bindings.
//
// view is the currency the request started with: a token is served without a fresh confirmation
// only when the view stayed current throughout (confirmGrant).
func (s *Server) tokenFor(ctx context.Context, view viewCheck, pod *podInfo, q *imdsreq.TokenQuery) (*cacheEntry, *grant, error) {
	start := time.Now()
	deadline := start.Add(s.budget())
	// object_id can only be matched once a token has revealed an identity's object ID; each pass
	// learns one, so this ends after at most one pass per bound identity.
	for range 64 {
		g, err := s.resolve(ctx, pod, q, start)
		if err != nil {
			return nil, g, err
		}
		id := g.id
		e, err := s.fetch(ctx, pod, id, q.Resource, deadline)
		if err != nil {
			return nil, g, s.federationWindow(err, pod, g)
		}
		if q.ObjectID != "" && !strings.EqualFold(e.tokens[0].ObjectID, q.ObjectID) {
			if e.tokens[0].ObjectID == "" {
				return nil, nil, fmt.Errorf("%w: the token of AzureIdentity %s/%s does not reveal its object ID, so object_id cannot be matched: select the identity with client_id or msi_res_id", ErrNotBound, id.Namespace, id.Name)
			}
			continue
		}
		// Checked after the fetch, right before serving: a cached token or one fetched from a
		// stale decision is served only once the API server confirms the decision.
		if err := s.confirmGrant(ctx, view, g); err != nil {
			return nil, nil, err
		}
		return e, g, nil
	}
	return nil, nil, fmt.Errorf("%w: no identity of pod %s matches object_id %s", ErrNotBound, pod.key(), q.ObjectID)
}

// budget is the longest a request may wait for its identity (upstream's retry flags).
func (s *Server) budget() time.Duration {
	return time.Duration(s.cfg.RetryAttemptsForCreated+s.cfg.RetryAttemptsForAssigned) * s.cfg.FindIdentityRetryInterval
}

// lookupState is how far a pod's chosen identity is.
type lookupState uint8

const (
	stateReady       lookupState = iota
	stateNoAssign                // no AzureAssignedIdentity yet
	stateNotAssigned             // an assignment exists but is not Assigned (for the current identity)
)

// resolve picks the identity for a request. Standard mode waits, woken by watch events, for MIC
// to assign it (bounded by the retry flags; not at all with --set-retry-after-header).
func (s *Server) resolve(ctx context.Context, pod *podInfo, q *imdsreq.TokenQuery, start time.Time) (*grant, error) {
	createdBy := start.Add(time.Duration(s.cfg.RetryAttemptsForCreated) * s.cfg.FindIdentityRetryInterval)
	assignedBy := start.Add(s.budget())
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		changed := s.store.Changed()
		g, st, err := s.evaluate(pod, q)
		if err != nil || st == stateReady {
			return g, err
		}
		id := g.id
		deadline := assignedBy
		what := "Assigned"
		if st == stateNoAssign {
			deadline, what = createdBy, "created"
		}
		wait := time.Until(deadline)
		if s.cfg.SetRetryAfterHeader || wait <= 0 {
			return nil, fmt.Errorf("%w: AzureIdentity %s/%s of pod %s is not %s on node %q yet (waited %s): retry; if this persists, check MIC's log",
				ErrNotAssigned, id.Namespace, id.Name, pod.key(), what, s.cfg.NodeName, time.Since(start).Round(time.Millisecond))
		}
		if timer == nil {
			timer = time.NewTimer(wait)
		} else {
			timer.Reset(wait)
		}
		select {
		case <-changed:
		case <-timer.C:
		case <-ctx.Done():
			return g, fmt.Errorf("%w: the client gave up while waiting for AzureIdentity %s/%s of pod %s: %v", ErrNotAssigned, id.Namespace, id.Name, pod.key(), ctx.Err())
		}
	}
}

// evaluate decides from current state, under one read lock: the identity the request gets and
// whether it can be served now.
func (s *Server) evaluate(pod *podInfo, q *imdsreq.TokenQuery) (*grant, lookupState, error) {
	st := s.store
	st.mu.RLock()
	defer st.mu.RUnlock()
	cur := st.podsByKey[pod.key()]
	if cur == nil || cur.UID != pod.UID {
		return nil, 0, fmt.Errorf("%w: pod %s left node %q", ErrNotBound, pod.key(), s.cfg.NodeName)
	}
	if cur.gone(s.cfg.ServeDeletingPods) {
		return nil, 0, fmt.Errorf("%w: pod %s is terminated or being deleted, so it is served no tokens (its IP may already belong to another pod)", ErrNotBound, pod.key())
	}
	bound, ignored := st.grantsLocked(cur, s.rules())
	if len(bound) == 0 {
		if len(ignored) > 0 {
			// Wrapped in ErrRefused too, so that the refusal is reported as a Warning event on
			// the ignored bindings: their owners must add the ServiceAccount.
			return &grant{bindings: ignored}, 0, fmt.Errorf("%w: %s (%w)", ErrNotBound, binding.IgnoredMessage(ignored[0]), ErrRefused)
		}
		if !cur.HasSelector {
			return nil, 0, fmt.Errorf("%w: pod %s (ServiceAccount %s) has no %s label and no AzureIdentityBinding names its ServiceAccount, so it is bound to no AzureIdentity: create a binding with spec.serviceAccountName %s in namespace %s", ErrNotBound, cur.key(), cur.ServiceAccount, aadv1.PodLabelKey, cur.ServiceAccount, cur.Namespace)
		}
		return nil, 0, fmt.Errorf("%w: pod %s (%s=%s, ServiceAccount %s) matches no AzureIdentityBinding with an existing AzureIdentity it may use: create the binding and identity (bindings naming a ServiceAccount match only pods of their own namespace running as it; in namespaced mode, everything in the pod's namespace)", ErrNotBound, cur.key(), aadv1.PodLabelKey, cur.Selector, cur.ServiceAccount)
	}
	var chosen *grant
	for i := range bound {
		if s.matches(bound[i].id, q) {
			chosen = &bound[i]
			break
		}
	}
	if chosen == nil {
		return nil, 0, fmt.Errorf("%w: pod %s is not bound to the requested identity (%s)", ErrNotBound, cur.key(), describeSelector(q))
	}
	chosen.pod = cur
	if err := s.checkPolicy(chosen.id); err != nil {
		return chosen, 0, err
	}
	// Federated identities are on no VM: nothing to wait for (MIC may write no AAI for them).
	if s.cfg.OperationMode == ModeManaged || chosen.id.Spec.IsFederated() {
		return chosen, stateReady, nil
	}
	found, assigned := st.assignmentLocked(cur.key(), chosen.id)
	switch {
	case assigned:
		return chosen, stateReady, nil
	case found:
		return chosen, stateNotAssigned, nil
	}
	return chosen, stateNoAssign, nil
}

// matches applies the request's selectors; object_id matches only identities whose object ID is
// unknown yet or equal (tokenFor checks it on the token).
func (s *Server) matches(id *aadv1.AzureIdentity, q *imdsreq.TokenQuery) bool {
	if q.ClientID != "" && !strings.EqualFold(q.ClientID, id.Spec.ClientID) {
		return false
	}
	if q.ResourceID != "" && !strings.EqualFold(q.ResourceID, id.Spec.ResourceID) {
		return false
	}
	if q.ObjectID != "" {
		if oid := s.cache.objectID(s.staticCredKey(id)); oid != "" && !strings.EqualFold(oid, q.ObjectID) {
			return false
		}
	}
	return true
}

func describeSelector(q *imdsreq.TokenQuery) string {
	var parts []string
	if q.ClientID != "" {
		parts = append(parts, "client_id="+imdsreq.Clip(q.ClientID))
	}
	if q.ResourceID != "" {
		parts = append(parts, "msi_res_id="+imdsreq.Clip(q.ResourceID))
	}
	if q.ObjectID != "" {
		parts = append(parts, "object_id="+imdsreq.Clip(q.ObjectID))
	}
	return strings.Join(parts, ", ")
}
