package emulator

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// ConflictCode is the ARM error code of a write to a resource whose previous write's operation
// is still running (HTTP 409), as Compute answers it.
const ConflictCode = "AnotherOperationInProgress"

// armCaller is the verified identity behind an ARM bearer token.
type armCaller struct {
	OID, AppID string
	Exp        time.Time
}

// armRoute is a parsed ARM request path.
type armRoute struct {
	op, kind      string // counter operation name; read/write/delete
	sub, resource string // subscription; resource ID (as sent) used for counters
	rg, name      string
	target        string // "vm", "vmss", "vmssvm", "vmssvms", "vms", "vmsss", "op", "uami", "uamis"
	instance      string
	opID          string
	child         string // federated identity credential name
}

func writeARMError(w http.ResponseWriter, e *ARMError) {
	body := map[string]any{"code": e.Code, "message": e.Message}
	if len(e.Target) > 0 {
		body["target"] = strings.Join(e.Target, ",")
	}
	writeJSON(w, e.Status, map[string]any{"error": body})
}

// parseARMPath maps a request to an operation; it returns nil for unknown paths.
func parseARMPath(method, path string) *armRoute {
	s := strings.Split(strings.Trim(path, "/"), "/")
	l := make([]string, len(s))
	for i := range s {
		l[i] = strings.ToLower(s[i])
	}
	if len(l) < 2 || l[0] != "subscriptions" {
		return nil
	}
	rt := &armRoute{sub: s[1], resource: path}
	kind := "read"
	switch method {
	case http.MethodPatch, http.MethodPut:
		kind = "write"
	case http.MethodDelete:
		kind = "delete"
	}
	rt.kind = kind
	// /subscriptions/{s}/providers/Microsoft.Compute/locations/{l}/operations/{id}
	if len(l) == 8 && l[2] == "providers" && l[3] == "microsoft.compute" && l[4] == "locations" && l[6] == "operations" && method == http.MethodGet {
		rt.target, rt.op, rt.opID = "op", OpOperationGet, s[7]
		return rt
	}
	if len(l) < 7 || l[2] != "resourcegroups" || l[4] != "providers" {
		return nil
	}
	rt.rg = s[3]
	get := method == http.MethodGet
	switch {
	case l[5] == "microsoft.compute" && l[6] == "virtualmachines":
		switch {
		case len(l) == 7 && get:
			rt.target, rt.op = "vms", OpVMList
		case len(l) == 8 && get:
			rt.target, rt.op, rt.name = "vm", OpVMGet, s[7]
		case len(l) == 8 && method == http.MethodPatch:
			rt.target, rt.op, rt.name = "vm", OpVMUpdate, s[7]
		default:
			return nil
		}
	case l[5] == "microsoft.compute" && l[6] == "virtualmachinescalesets":
		switch {
		case len(l) == 7 && get:
			rt.target, rt.op = "vmsss", OpVMSSList
		case len(l) == 8 && get:
			rt.target, rt.op, rt.name = "vmss", OpVMSSGet, s[7]
		case len(l) == 8 && method == http.MethodPatch:
			rt.target, rt.op, rt.name = "vmss", OpVMSSUpdate, s[7]
		case len(l) == 9 && l[8] == "virtualmachines" && get:
			rt.target, rt.op, rt.name = "vmssvms", OpVMSSVMList, s[7]
		case len(l) == 10 && l[8] == "virtualmachines" && get:
			rt.target, rt.op, rt.name, rt.instance = "vmssvm", OpVMSSVMGet, s[7], s[9]
		default:
			return nil
		}
	case l[5] == "microsoft.managedidentity" && l[6] == "userassignedidentities":
		switch {
		case len(l) == 7 && get:
			rt.target, rt.op = "uamis", OpIdentityList
		case len(l) == 8 && get:
			rt.target, rt.op, rt.name = "uami", OpIdentityGet, s[7]
		case len(l) == 8 && method == http.MethodPut:
			rt.target, rt.op, rt.name = "uami", OpIdentityPut, s[7]
		case len(l) == 8 && method == http.MethodDelete:
			rt.target, rt.op, rt.name = "uami", OpIdentityDel, s[7]
		case len(l) == 9 && l[8] == "federatedidentitycredentials" && get:
			rt.target, rt.op, rt.name = "fics", OpFICList, s[7]
		case len(l) == 10 && l[8] == "federatedidentitycredentials" && ficOps[method] != "":
			rt.target, rt.op, rt.name, rt.child = "fic", ficOps[method], s[7], s[9]
		default:
			return nil
		}
	default:
		return nil
	}
	return rt
}

func (e *Emulator) authenticateARM(r *http.Request) (*armCaller, *ARMError) {
	h := r.Header.Get("Authorization")
	if h == "" {
		return nil, &ARMError{401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.", nil}
	}
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		return nil, &ARMError{401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is provided in an invalid format.", nil}
	}
	now := time.Now()
	if v, ok := e.armAuth.Load(tok); ok {
		if c := v.(*armCaller); now.Before(c.Exp) {
			return c, nil
		}
		e.armAuth.Delete(tok)
	}
	claims, err := e.VerifyToken(tok)
	if err != nil {
		if errors.Is(err, jwt.ErrTokenExpired) {
			return nil, &ARMError{401, "ExpiredAuthenticationToken", fmt.Sprintf("The access token expiry UTC time is earlier than current UTC time '%s'.", now.UTC().Format(time.RFC3339)), nil}
		}
		return nil, &ARMError{401, "InvalidAuthenticationToken", "The access token is invalid. It must be issued by the emulator's AAD (" + e.aadURL + ").", nil}
	}
	aud, _ := claims["aud"].(string)
	if !e.armAudience(aud) {
		return nil, &ARMError{401, "InvalidAuthenticationTokenAudience", fmt.Sprintf("The access token has been obtained for wrong audience or resource '%s'. It should exactly match with one of the allowed audiences 'https://management.core.windows.net/','https://management.core.windows.net','https://management.azure.com/','https://management.azure.com'.", aud), nil}
	}
	exp, _ := claims.GetExpirationTime()
	c := &armCaller{Exp: exp.Time}
	c.OID, _ = claims["oid"].(string)
	c.AppID, _ = claims["appid"].(string)
	e.armAuth.Store(tok, c)
	return c, nil
}

func (e *Emulator) armHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: 200}
		rt := parseARMPath(r.Method, r.URL.Path)
		op, kind, res := "NotFound", "", r.URL.Path
		if rt != nil {
			op, kind = rt.op, rt.kind
		}
		caller := ""
		defer func() {
			e.counters.inc(CounterKey{Service: ServiceARM, Operation: op, Kind: kind, Resource: res, Status: rec.status})
			e.log.V(1).Info("arm call", "method", r.Method, "path", r.URL.Path, "op", op, "caller", caller,
				"status", rec.status, "duration", time.Since(start))
		}()
		h := rec.Header()
		h.Set("x-ms-request-id", randomID())
		h.Set("x-ms-correlation-request-id", or(r.Header.Get("x-ms-correlation-request-id"), randomID()))
		if rt == nil {
			writeARMError(rec, &ARMError{404, "InvalidResourceType", fmt.Sprintf("The emulator does not serve %s %s: it serves virtualMachines, virtualMachineScaleSets (and their virtualMachines), userAssignedIdentities (and their federatedIdentityCredentials) and Compute operation status.", r.Method, r.URL.Path), nil})
			return
		}
		c, aerr := e.authenticateARM(r)
		if aerr != nil {
			writeARMError(rec, aerr)
			return
		}
		caller = c.OID
		remaining, wait, ok := e.throttle.take(rt.sub, c.OID, kind, start)
		h.Set("x-ms-ratelimit-remaining-subscription-"+kind+"s", strconv.Itoa(remaining))
		if !ok {
			h.Set("Retry-After", retryAfterSeconds(wait))
			writeARMError(rec, &ARMError{429, "SubscriptionRequestsThrottled",
				fmt.Sprintf("Number of '%s' requests for subscription '%s' actor '%s' exceeded. Please try again after '%s' seconds after additional tokens are available. Refer to https://aka.ms/arm-throttling",
					kind, rt.sub, c.OID, retryAfterSeconds(wait)), nil})
			return
		}
		var async *Fault
		if f := e.faults.take(ServiceARM, op, r.URL.Path); f != nil {
			if f.Latency.Duration > 0 {
				time.Sleep(f.Latency.Duration)
			}
			if f.Async {
				async = f
			} else if f.Status != 0 {
				if f.RetryAfter.Duration > 0 {
					h.Set("Retry-After", retryAfterSeconds(f.RetryAfter.Duration))
				}
				writeARMError(rec, &ARMError{f.Status, or(f.Code, "InternalServerError"), or(f.Message, "Injected fault."), nil})
				return
			}
		}
		if d := e.cfg.Timing.ARMLatency.Duration; d > 0 {
			time.Sleep(d)
		}
		switch rt.target {
		case "op":
			e.serveOperation(rec, r, rt)
		case "vm", "vmss":
			if r.Method == http.MethodPatch {
				e.servePatch(rec, r, rt, c, async)
			} else {
				e.serveComputeGet(rec, rt)
			}
		case "vms", "vmsss":
			e.serveComputeList(rec, rt)
		case "vmssvm", "vmssvms":
			e.serveInstances(rec, rt)
		case "uami", "uamis":
			e.serveIdentity(rec, r, rt)
		case "fic", "fics":
			e.serveFIC(rec, r, rt)
		}
	})
}

func notFound(typ, name, rg string) *ARMError {
	return &ARMError{404, "ResourceNotFound", fmt.Sprintf("The Resource '%s/%s' under resource group '%s' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix", typ, name, rg), nil}
}

func (e *Emulator) lookupCompute(rt *armRoute, kind Kind) *compute {
	id := VMID(rt.sub, rt.rg, rt.name)
	if kind == KindVMSS {
		id = VMSSID(rt.sub, rt.rg, rt.name)
	}
	return e.computes[strings.ToLower(id)]
}

func routeKind(rt *armRoute) Kind {
	if strings.HasPrefix(rt.target, "vmss") {
		return KindVMSS
	}
	return KindVM
}

func (e *Emulator) serveComputeGet(w http.ResponseWriter, rt *armRoute) {
	e.mu.RLock()
	c := e.lookupCompute(rt, routeKind(rt))
	if c == nil {
		e.mu.RUnlock()
		writeARMError(w, notFound("Microsoft.Compute/"+string(routeKind(rt)), rt.name, rt.rg))
		return
	}
	body := e.renderCompute(c)
	etag := c.ETag
	e.mu.RUnlock()
	w.Header().Set("ETag", fmt.Sprintf(`"%d"`, etag))
	writeJSON(w, 200, body)
}

func (e *Emulator) serveComputeList(w http.ResponseWriter, rt *armRoute) {
	k := routeKind(rt)
	var out []any
	e.mu.RLock()
	for _, c := range e.computes {
		if c.Kind == k && strings.EqualFold(c.Sub, rt.sub) && strings.EqualFold(c.RG, rt.rg) {
			out = append(out, e.renderCompute(c))
		}
	}
	e.mu.RUnlock()
	writeJSON(w, 200, map[string]any{"value": nonNil(out)})
}

func nonNil(v []any) []any {
	if v == nil {
		return []any{}
	}
	return v
}

func (e *Emulator) serveInstances(w http.ResponseWriter, rt *armRoute) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	c := e.lookupCompute(rt, KindVMSS)
	if c == nil {
		writeARMError(w, notFound("Microsoft.Compute/virtualMachineScaleSets", rt.name, rt.rg))
		return
	}
	if rt.target == "vmssvms" {
		out := make([]any, 0, len(c.Instances))
		for _, in := range c.Instances {
			out = append(out, e.renderInstance(in))
		}
		writeJSON(w, 200, map[string]any{"value": out})
		return
	}
	for _, in := range c.Instances {
		if in.InstanceID == rt.instance {
			writeJSON(w, 200, e.renderInstance(in))
			return
		}
	}
	writeARMError(w, notFound("Microsoft.Compute/virtualMachineScaleSets/virtualMachines", rt.name+"/"+rt.instance, rt.rg))
}

// renderIdentity renders an identity block; stale entries (identity deleted or re-created) show
// null principalId and clientId, as ARM does.
func (e *Emulator) renderIdentity(s identityState, tenant string) map[string]any {
	if !s.System && len(s.User) == 0 {
		return nil
	}
	m := map[string]any{"type": s.typeString()}
	if s.System {
		m["principalId"] = s.SystemPrincipalID
		m["tenantId"] = tenant
	}
	if len(s.User) > 0 {
		u := map[string]any{}
		for l, a := range s.User {
			if idn := e.identities[l]; idn != nil && idn.Generation == a.Generation {
				u[a.ID] = map[string]any{"principalId": a.PrincipalID, "clientId": a.ClientID}
			} else {
				u[a.ID] = map[string]any{"principalId": nil, "clientId": nil}
			}
		}
		m["userAssignedIdentities"] = u
	}
	return m
}

func (e *Emulator) renderCompute(c *compute) map[string]any {
	m := map[string]any{"id": c.ID, "name": c.Name, "type": "Microsoft.Compute/" + string(c.Kind), "location": c.Location,
		"etag": fmt.Sprintf(`"%d"`, c.ETag), "tags": map[string]string{}}
	if id := e.renderIdentity(c.Identity, c.TenantID); id != nil {
		m["identity"] = id
	}
	if c.Kind == KindVM {
		m["properties"] = map[string]any{"vmId": c.VMID, "provisioningState": c.ProvisioningState,
			"hardwareProfile": map[string]any{"vmSize": "Standard_D2s_v3"},
			"osProfile":       map[string]any{"computerName": c.Name}}
	} else {
		m["sku"] = map[string]any{"name": "Standard_D2s_v3", "tier": "Standard", "capacity": len(c.Instances)}
		m["properties"] = map[string]any{"uniqueId": c.VMID, "provisioningState": c.ProvisioningState,
			"upgradePolicy":         map[string]any{"mode": "Manual"},
			"virtualMachineProfile": map[string]any{"osProfile": map[string]any{"computerNamePrefix": c.Name}}}
	}
	return m
}

func (e *Emulator) renderInstance(in *instance) map[string]any {
	m := map[string]any{"id": in.ID, "name": in.Name, "instanceId": in.InstanceID, "location": in.Parent.Location,
		"type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
		"properties": map[string]any{"vmId": in.VMID, "provisioningState": "Succeeded", "latestModelApplied": true,
			"osProfile": map[string]any{"computerName": in.ComputerName}}}
	if id := e.renderIdentity(in.Parent.Identity, in.Parent.TenantID); id != nil {
		m["identity"] = id
	}
	return m
}

func (e *Emulator) opURL(op *operation) string {
	return fmt.Sprintf("%s/subscriptions/%s/providers/Microsoft.Compute/locations/%s/operations/%s?api-version=2026-04-01", e.armURL, op.Sub, op.Location, op.ID)
}

func (e *Emulator) servePatch(w http.ResponseWriter, r *http.Request, rt *armRoute, caller *armCaller, async *Fault) {
	var body struct {
		Identity *identityPatch `json:"identity"`
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 8<<20))
	if err == nil {
		err = json.Unmarshal(raw, &body)
	}
	if err != nil {
		writeARMError(w, &ARMError{400, "InvalidRequestContent", "The request content was invalid and could not be deserialized: " + err.Error(), nil})
		return
	}
	k := routeKind(rt)
	e.mu.Lock()
	c := e.lookupCompute(rt, k)
	if c == nil {
		e.mu.Unlock()
		writeARMError(w, notFound("Microsoft.Compute/"+string(k), rt.name, rt.rg))
		return
	}
	if c.ProvisioningState == "Deleting" {
		e.mu.Unlock()
		writeARMError(w, &ARMError{409, "OperationNotAllowed", fmt.Sprintf("The operation 'Update' is not allowed on resource '%s' since it is marked for deletion.", c.ID), nil})
		return
	}
	if c.Op != nil {
		url := e.opURL(c.Op)
		e.mu.Unlock()
		writeARMError(w, &ARMError{409, ConflictCode, fmt.Sprintf("Operation 'Update' on resource '%s' is not allowed because another operation on this or a dependent resource is in progress. To retrieve status of the operation use uri: %s", c.ID, url), nil})
		return
	}
	if im := r.Header.Get("If-Match"); im != "" && im != "*" && im != fmt.Sprintf(`"%d"`, c.ETag) {
		e.mu.Unlock()
		writeARMError(w, &ARMError{412, "PreconditionFailed", fmt.Sprintf("The condition specified in If-Match %s does not match the current ETag \"%d\"; GET the resource and retry with its ETag.", im, c.ETag), nil})
		return
	}
	// before is a copy: out-of-band changes during the operation mutate c.Identity in place.
	before := c.Identity.clone()
	next := before
	if body.Identity != nil {
		p := e.byOID[strings.ToLower(caller.OID)]
		next, err = applyIdentityPatch(c.Identity, patchInput{
			ResourceID: c.ID, Patch: *body.Identity,
			Lookup: func(l string) (*identity, bool) { i, ok := e.identities[l]; return i, ok },
			Denied: func(l string) bool { return p != nil && p.Denied[l] },
			NewSystemPrincipal: func() string {
				c.systemGen++
				return derivedGUID(fmt.Sprintf("system:%s#%d", c.ID, c.systemGen))
			},
		})
		if err != nil {
			e.mu.Unlock()
			var ae *ARMError
			if errors.As(err, &ae) {
				writeARMError(w, ae)
			} else {
				writeARMError(w, &ARMError{500, "InternalServerError", err.Error(), nil})
			}
			return
		}
	}
	op := &operation{ID: randomID(), Location: c.Location, Sub: c.Sub, Res: c, Start: time.Now(), Status: "InProgress"}
	if async != nil {
		op.ErrCode, op.ErrMsg = or(async.Code, "InternalExecutionError"), or(async.Message, "An internal execution error occurred. Please retry later.")
	}
	e.ops[op.ID] = op
	d := e.cfg.Timing.VMOperation.Duration
	if k == KindVMSS {
		d = e.cfg.Timing.VMSSOperation.Duration
	}
	c.Op = op
	c.ProvisioningState = "Updating"
	if d <= 0 {
		e.completeLocked(op, before, next)
	}
	resp := e.renderCompute(c)
	e.mu.Unlock()
	if d > 0 {
		time.AfterFunc(d, func() {
			e.mu.Lock()
			e.completeLocked(op, before, next)
			e.mu.Unlock()
		})
	}
	h := w.Header()
	u := e.opURL(op)
	h.Set("Azure-AsyncOperation", u)
	h.Set("Location", u+"&monitor=true")
	if ra := e.cfg.Timing.OperationRetryAfter.Duration; ra > 0 {
		h.Set("Retry-After", retryAfterSeconds(ra))
	}
	writeJSON(w, 200, resp)
}

// completeLocked ends an operation: on success the operation's change (before → next) is applied
// to the identity block as it is now, so that out-of-band changes made while the operation ran
// (AssignIdentity, RemoveIdentity) survive, and newly added identities become visible to IMDS
// after the propagation delay.
func (e *Emulator) completeLocked(op *operation, before, next identityState) {
	c := op.Res
	now := time.Now()
	if op.ErrCode != "" {
		op.Status = "Failed"
	} else {
		next = rebase(c.Identity, before, next)
		vis := now.Add(e.cfg.Timing.IMDSPropagation.Duration)
		for l, a := range next.User {
			if old, ok := c.Identity.User[l]; ok && old.Generation == a.Generation {
				a.VisibleAt = old.VisibleAt
			} else if a.VisibleAt.IsZero() {
				a.VisibleAt = vis
			}
		}
		c.Identity = next
		c.ETag++
		op.Status = "Succeeded"
	}
	c.Op = nil
	if c.ProvisioningState == "Updating" {
		c.ProvisioningState = "Succeeded"
	}
}

func (e *Emulator) serveOperation(w http.ResponseWriter, r *http.Request, rt *armRoute) {
	e.mu.RLock()
	op := e.ops[rt.opID]
	var status, code, msg string
	var start time.Time
	if op != nil {
		status, code, msg, start = op.Status, op.ErrCode, op.ErrMsg, op.Start
	}
	e.mu.RUnlock()
	if op == nil || !strings.EqualFold(op.Sub, rt.sub) {
		writeARMError(w, &ARMError{404, "NotFound", fmt.Sprintf("The operation '%s' was not found in subscription '%s'.", rt.opID, rt.sub), nil})
		return
	}
	if r.URL.Query().Get("monitor") == "true" {
		if status == "InProgress" {
			w.Header().Set("Location", e.opURL(op)+"&monitor=true")
			w.WriteHeader(202)
			return
		}
		if status == "Failed" {
			writeARMError(w, &ARMError{500, code, msg, nil})
			return
		}
		w.WriteHeader(200)
		return
	}
	body := map[string]any{"startTime": start.UTC().Format(time.RFC3339Nano), "status": status, "name": op.ID}
	if status == "InProgress" {
		if ra := e.cfg.Timing.OperationRetryAfter.Duration; ra > 0 {
			w.Header().Set("Retry-After", retryAfterSeconds(ra))
		}
	} else {
		body["endTime"] = time.Now().UTC().Format(time.RFC3339Nano)
	}
	if status == "Failed" {
		body["error"] = map[string]any{"code": code, "message": msg}
	}
	writeJSON(w, 200, body)
}

func (e *Emulator) renderUAMI(i *identity) map[string]any {
	return map[string]any{"id": i.ID, "name": i.Name, "type": "Microsoft.ManagedIdentity/userAssignedIdentities",
		"location": i.Location, "tags": map[string]string{},
		"properties": map[string]any{"tenantId": i.TenantID, "principalId": i.PrincipalID, "clientId": i.ClientID, "isolationScope": "None"}}
}

func (e *Emulator) serveIdentity(w http.ResponseWriter, r *http.Request, rt *armRoute) {
	if rt.target == "uamis" {
		var out []any
		e.mu.RLock()
		for _, i := range e.identities {
			if strings.EqualFold(i.Sub, rt.sub) && strings.EqualFold(i.RG, rt.rg) {
				out = append(out, e.renderUAMI(i))
			}
		}
		e.mu.RUnlock()
		writeJSON(w, 200, map[string]any{"value": nonNil(out)})
		return
	}
	l := strings.ToLower(IdentityID(rt.sub, rt.rg, rt.name))
	switch r.Method {
	case http.MethodGet:
		e.mu.RLock()
		i := e.identities[l]
		var body map[string]any
		if i != nil {
			body = e.renderUAMI(i)
		}
		e.mu.RUnlock()
		if i == nil {
			writeARMError(w, notFound("Microsoft.ManagedIdentity/userAssignedIdentities", rt.name, rt.rg))
			return
		}
		writeJSON(w, 200, body)
	case http.MethodPut:
		var in struct {
			Location string `json:"location"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&in); err != nil {
			writeARMError(w, &ARMError{400, "InvalidRequestContent", "The request content was invalid and could not be deserialized: " + err.Error(), nil})
			return
		}
		e.mu.Lock()
		i, status := e.identities[l], 200
		if i == nil {
			i = e.createIdentityLocked(IdentityConfig{Name: rt.name, SubscriptionID: rt.sub, ResourceGroup: rt.rg})
			if in.Location != "" {
				i.Location = in.Location
			}
			status = 201
		}
		body := e.renderUAMI(i)
		e.mu.Unlock()
		writeJSON(w, status, body)
	case http.MethodDelete:
		e.mu.Lock()
		_, ok := e.identities[l]
		delete(e.identities, l)
		e.mu.Unlock()
		if !ok {
			w.WriteHeader(204)
			return
		}
		w.WriteHeader(200)
	}
}

// rebase replays the change from before to next onto cur: user identities added or removed by the
// change are added or removed, others keep cur's state; the system-assigned part follows next.
func rebase(cur, before, next identityState) identityState {
	out := cur.clone()
	out.System, out.SystemPrincipalID = next.System, next.SystemPrincipalID
	for k := range before.User {
		if _, kept := next.User[k]; !kept {
			delete(out.User, k)
		}
	}
	for k, a := range next.User {
		if old, had := before.User[k]; !had || old.Generation != a.Generation {
			b := *a
			out.User[k] = &b
		}
	}
	return out
}
