package emulator

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// IdentityInfo describes a user-assigned identity.
type IdentityInfo struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	ClientID    string `json:"clientID"`
	PrincipalID string `json:"principalID"`
	TenantID    string `json:"tenantID"`
}

func (i *identity) info() IdentityInfo {
	return IdentityInfo{ID: i.ID, Name: i.Name, ClientID: i.ClientID, PrincipalID: i.PrincipalID, TenantID: i.TenantID}
}

// resolveComputeLocked finds a VM or VMSS by resource ID, name, or any host key of its instances.
func (e *Emulator) resolveComputeLocked(key string) (*compute, error) {
	l := strings.ToLower(key)
	if c := e.computes[l]; c != nil {
		return c, nil
	}
	if c := e.computes[strings.ToLower(VMSSID(e.cfg.SubscriptionID, e.cfg.ResourceGroup, key))]; c != nil {
		return c, nil
	}
	if h, err := e.hostLocked(key); err == nil {
		return h.Res, nil
	}
	return nil, &NotFoundError{"VM or VMSS", key}
}

// Identity returns a user-assigned identity by name (default subscription/group) or ID.
func (e *Emulator) Identity(nameOrID string) (IdentityInfo, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	i := e.identities[e.identityKey(nameOrID)]
	if i == nil {
		return IdentityInfo{}, &NotFoundError{"identity", nameOrID}
	}
	return i.info(), nil
}

// CreateIdentity creates an identity out of band, or re-creates it when it was deleted (new
// client and principal IDs; VM entries pointing at the old one turn stale). Creating an
// identity that exists returns it unchanged.
func (e *Emulator) CreateIdentity(ic IdentityConfig) (IdentityInfo, error) {
	if ic.Name == "" {
		return IdentityInfo{}, &ConfigError{"identity without a name: set Name"}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	sub, rg := or(ic.SubscriptionID, e.cfg.SubscriptionID), or(ic.ResourceGroup, e.cfg.ResourceGroup)
	if i := e.identities[strings.ToLower(IdentityID(sub, rg, ic.Name))]; i != nil {
		return i.info(), nil
	}
	return e.createIdentityLocked(ic).info(), nil
}

// DeleteIdentity deletes an identity out of band (as `az identity delete` would). Assignments
// on VMs stay, as in Azure, but no longer resolve.
func (e *Emulator) DeleteIdentity(nameOrID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	k := e.identityKey(nameOrID)
	if e.identities[k] == nil {
		return &NotFoundError{"identity", nameOrID}
	}
	delete(e.identities, k)
	return nil
}

// AssignIdentity adds an identity to a VM or VMSS out of band (no operation, no counters);
// IMDS serves it after the propagation delay.
func (e *Emulator) AssignIdentity(resource, identityNameOrID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.resolveComputeLocked(resource)
	if err != nil {
		return err
	}
	k := e.identityKey(identityNameOrID)
	i := e.identities[k]
	if i == nil {
		return &NotFoundError{"identity", identityNameOrID}
	}
	if a, ok := c.Identity.User[k]; ok && a.Generation == i.Generation {
		return nil
	}
	c.Identity.User[k] = &assignment{ID: i.ID, PrincipalID: i.PrincipalID, ClientID: i.ClientID, Generation: i.Generation,
		VisibleAt: time.Now().Add(e.cfg.Timing.IMDSPropagation.Duration)}
	c.ETag++
	return nil
}

// RemoveIdentity removes an identity from a VM or VMSS out of band (as someone using the portal
// would). Removing an identity that is not assigned is not an error.
func (e *Emulator) RemoveIdentity(resource, identityNameOrID string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.resolveComputeLocked(resource)
	if err != nil {
		return err
	}
	delete(c.Identity.User, e.identityKey(identityNameOrID))
	c.ETag++
	return nil
}

// AssignedIdentities returns the IDs in a VM's or VMSS's userAssignedIdentities, as ARM shows
// them now (including stale entries), sorted.
func (e *Emulator) AssignedIdentities(resource string) ([]string, error) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c, err := e.resolveComputeLocked(resource)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(c.Identity.User))
	for _, a := range c.Identity.User {
		out = append(out, a.ID)
	}
	sort.Strings(out)
	return out, nil
}

// SetProvisioningState sets a VM's or VMSS's provisioningState (e.g. "Deleting", which makes
// writes fail with 409 OperationNotAllowed).
func (e *Emulator) SetProvisioningState(resource, state string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.resolveComputeLocked(resource)
	if err != nil {
		return err
	}
	c.ProvisioningState = state
	return nil
}

// PrincipalCredential returns a credential that mints ARM tokens for a configured service
// principal directly, without an AAD round trip; handy for tests of ARM callers.
func (e *Emulator) PrincipalCredential(appID string) (azcore.TokenCredential, error) {
	e.mu.RLock()
	p := e.principals[strings.ToLower(appID)]
	e.mu.RUnlock()
	if p == nil {
		return nil, &NotFoundError{"service principal", appID}
	}
	return staticCred{e, p}, nil
}

type staticCred struct {
	e *Emulator
	p *principal
}

func (s staticCred) GetToken(_ context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	aud := ARMAudience
	if len(o.Scopes) > 0 {
		aud = strings.TrimSuffix(o.Scopes[0], "/.default")
	}
	tok, exp, err := s.e.mintToken(tokenSpec{Audience: aud, TenantID: s.p.TenantID, AppID: s.p.AppID, OID: s.p.ObjectID,
		Lifetime: s.e.cfg.Timing.TokenLifetime.Duration}, time.Now())
	return azcore.AccessToken{Token: tok, ExpiresOn: exp}, err
}

type adminAssign struct {
	Resource string `json:"resource"`
	Identity string `json:"identity"`
}

// adminHandler serves the admin API (see docs/emulator.md).
func (e *Emulator) adminHandler() http.Handler {
	mux := http.NewServeMux()
	fail := func(w http.ResponseWriter, status int, err error) {
		writeJSON(w, status, map[string]string{"error": err.Error()})
	}
	decode := func(w http.ResponseWriter, r *http.Request, v any) bool {
		dec := json.NewDecoder(r.Body)
		dec.DisallowUnknownFields()
		if err := dec.Decode(v); err != nil {
			fail(w, 400, fmt.Errorf("decode request body (see docs/emulator.md for the fields): %w", err))
			return false
		}
		return true
	}
	status := func(err error) int {
		if _, ok := err.(*NotFoundError); ok {
			return 404
		}
		return 400
	}
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, 200, map[string]any{"arm": e.armURL, "aad": e.aadURL, "admin": e.adminURL, "hosts": e.Hosts(),
			"tenantID": e.cfg.TenantID, "subscriptionID": e.cfg.SubscriptionID, "resourceGroup": e.cfg.ResourceGroup, "ca": string(e.pki.caPEM)})
	})
	mux.HandleFunc("GET /counters", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		st, _ := strconv.Atoi(q.Get("status"))
		code, _ := strconv.Atoi(q.Get("code"))
		k := CounterKey{Service: q.Get("service"), Operation: q.Get("operation"), Kind: q.Get("kind"),
			Resource: q.Get("resource"), Identity: q.Get("identity"), Subject: q.Get("subject"), Code: code, Status: st}
		var sel []CounterEntry
		for _, c := range e.Counters() {
			if c.matches(k) {
				sel = append(sel, c)
			}
		}
		writeJSON(w, 200, map[string]any{"total": e.Count(k), "entries": sel})
	})
	mux.HandleFunc("DELETE /counters", func(w http.ResponseWriter, _ *http.Request) { e.ResetCounters(); w.WriteHeader(204) })
	mux.HandleFunc("POST /faults", func(w http.ResponseWriter, r *http.Request) {
		var f Fault
		if !decode(w, r, &f) {
			return
		}
		if f.Service != ServiceARM && f.Service != ServiceAAD && f.Service != ServiceIMDS {
			fail(w, 400, fmt.Errorf("fault service %q: use arm, aad or imds", f.Service))
			return
		}
		e.AddFault(f)
		w.WriteHeader(204)
	})
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, _ *http.Request) { e.ClearFaults(); w.WriteHeader(204) })
	mux.HandleFunc("PUT /throttling", func(w http.ResponseWriter, r *http.Request) {
		var t struct {
			Enabled bool `json:"enabled"`
		}
		if decode(w, r, &t) {
			e.SetThrottling(t.Enabled)
			w.WriteHeader(204)
		}
	})
	mux.HandleFunc("PUT /imds/limits", func(w http.ResponseWriter, r *http.Request) {
		var l IMDSLimits
		if decode(w, r, &l) {
			e.SetIMDSLimits(l)
			w.WriteHeader(204)
		}
	})
	mux.HandleFunc("POST /imds", func(w http.ResponseWriter, r *http.Request) {
		var in struct {
			Host string `json:"host"`
			Addr string `json:"addr"`
		}
		if !decode(w, r, &in) {
			return
		}
		u, err := e.StartIMDS(in.Host, in.Addr)
		if err != nil {
			fail(w, status(err), err)
			return
		}
		writeJSON(w, 200, map[string]string{"url": u})
	})
	mux.HandleFunc("POST /identities", func(w http.ResponseWriter, r *http.Request) {
		var ic IdentityConfig
		if !decode(w, r, &ic) {
			return
		}
		i, err := e.CreateIdentity(ic)
		if err != nil {
			fail(w, status(err), err)
			return
		}
		writeJSON(w, 200, i)
	})
	mux.HandleFunc("GET /identities/{name}", func(w http.ResponseWriter, r *http.Request) {
		i, err := e.Identity(r.PathValue("name"))
		if err != nil {
			fail(w, status(err), err)
			return
		}
		writeJSON(w, 200, i)
	})
	mux.HandleFunc("DELETE /identities/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := e.DeleteIdentity(r.PathValue("name")); err != nil {
			fail(w, status(err), err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("POST /assignments", func(w http.ResponseWriter, r *http.Request) {
		var a adminAssign
		if !decode(w, r, &a) {
			return
		}
		if err := e.AssignIdentity(a.Resource, a.Identity); err != nil {
			fail(w, status(err), err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("DELETE /assignments", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if err := e.RemoveIdentity(q.Get("resource"), q.Get("identity")); err != nil {
			fail(w, status(err), err)
			return
		}
		w.WriteHeader(204)
	})
	mux.HandleFunc("GET /assignments", func(w http.ResponseWriter, r *http.Request) {
		ids, err := e.AssignedIdentities(r.URL.Query().Get("resource"))
		if err != nil {
			fail(w, status(err), err)
			return
		}
		writeJSON(w, 200, map[string]any{"identities": ids})
	})
	e.ficAdmin(mux, fail, status)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.log.V(1).Info("admin call", "method", r.Method, "path", r.URL.Path, "query", r.URL.RawQuery)
		mux.ServeHTTP(w, r)
	})
}
