// Package armcloud implements cloud.Compute with the official Azure SDK (armcompute). Endpoints,
// credentials and trusted CAs come from azureconfig.Settings, which is also how tests point it at
// the emulator.
package armcloud

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azcloud "github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v8"

	"github.com/podidentity/podidentity/internal/azureconfig"
	"github.com/podidentity/podidentity/internal/cloud"
)

// Options tune the client.
type Options struct {
	// PollInterval is the wait between polls of a long-running operation when ARM sends no
	// Retry-After (the SDK default of 30 s would add up to 30 s to every assignment).
	PollInterval time.Duration
	// UserAgent is appended to the SDK's User-Agent on every request (ARM and Azure AD), e.g.
	// version.UserAgent("mic", custom). It is not azcore's Telemetry.ApplicationID, which is cut
	// at 24 characters and may not hold spaces: "podidentity/mic/<version> <custom>" does not fit.
	UserAgent string
	// Observe, when set, is called after every ARM call with the upstream operation name
	// (vm_get, vm_update, vmss_get, vmss_update).
	Observe func(operation string, d time.Duration, err error)
	// Transport overrides the HTTP client (tests).
	Transport policy.Transporter
}

// Client is a cloud.Compute over ARM.
type Client struct {
	opts Options
	cred azcore.TokenCredential
	aopt *arm.ClientOptions

	mu   sync.Mutex
	vms  map[string]*armcompute.VirtualMachinesClient
	vmss map[string]*armcompute.VirtualMachineScaleSetsClient
}

var _ cloud.Compute = (*Client)(nil)

// New builds ARM clients from settings. It does not call Azure.
func New(s *azureconfig.Settings, o Options) (*Client, error) {
	if o.PollInterval <= 0 {
		o.PollInterval = time.Second
	}
	transport := o.Transport
	if transport == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		if s.CAs != nil {
			t.TLSClientConfig = &tls.Config{RootCAs: s.CAs, MinVersion: tls.VersionTLS12}
		}
		// One connection per concurrently reconciled resource is plenty; keep them alive.
		t.MaxIdleConnsPerHost = 32
		transport = &http.Client{Transport: t, Timeout: 2 * time.Minute}
	}
	cc := azcloud.Configuration{
		ActiveDirectoryAuthorityHost: s.Env.ActiveDirectoryEndpoint,
		Services: map[azcloud.ServiceName]azcloud.ServiceConfiguration{
			azcloud.ResourceManager: {Endpoint: s.Env.ResourceManagerEndpoint, Audience: s.Env.TokenAudience},
		},
	}
	co := azcore.ClientOptions{Cloud: cc, Transport: transport,
		PerCallPolicies: []policy.Policy{userAgent(o.UserAgent)},
		// 429 is not retried inside the SDK: MIC honours Retry-After itself, per subscription, so
		// that a throttled resource does not hold a worker asleep (and nothing else waits on it).
		Retry: policy.RetryOptions{MaxRetries: 2, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: 5 * time.Second,
			StatusCodes: []int{http.StatusRequestTimeout, 500, 502, 503, 504}},
	}
	knownCloud := strings.Contains(s.Env.ActiveDirectoryEndpoint, "login.microsoftonline.") ||
		strings.Contains(s.Env.ActiveDirectoryEndpoint, "login.chinacloudapi.cn") || strings.Contains(s.Env.ActiveDirectoryEndpoint, "login.microsoftonline.us")
	var cred azcore.TokenCredential
	var err error
	switch s.Auth() {
	case azureconfig.AuthServicePrincipal:
		cred, err = azidentity.NewClientSecretCredential(s.Config.TenantID, s.Config.AADClientID, s.Config.AADClientSecret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: co, DisableInstanceDiscovery: !knownCloud})
	case azureconfig.AuthUserMSI:
		cred, err = azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: co,
			ID: azidentity.ClientID(s.Config.UserAssignedIdentityID)})
	default:
		cred, err = azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: co})
	}
	if err != nil {
		return nil, fmt.Errorf("building the Azure credential: %w", err)
	}
	return &Client{opts: o, cred: cred, aopt: &arm.ClientOptions{ClientOptions: co, DisableRPRegistration: true},
		vms: map[string]*armcompute.VirtualMachinesClient{}, vmss: map[string]*armcompute.VirtualMachineScaleSetsClient{}}, nil
}

// userAgent appends ua to the User-Agent the SDK's telemetry policy (which runs before per-call
// policies) has set.
type userAgent string

func (ua userAgent) Do(req *policy.Request) (*http.Response, error) {
	if ua != "" {
		h := req.Raw().Header
		if cur := h.Get("User-Agent"); cur != "" {
			h.Set("User-Agent", cur+" "+string(ua))
		} else {
			h.Set("User-Agent", string(ua))
		}
	}
	return req.Next()
}

func (c *Client) vmClient(sub string) (*armcompute.VirtualMachinesClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.vms[sub]; v != nil {
		return v, nil
	}
	v, err := armcompute.NewVirtualMachinesClient(sub, c.cred, c.aopt)
	if err == nil {
		c.vms[sub] = v
	}
	return v, err
}

func (c *Client) vmssClient(sub string) (*armcompute.VirtualMachineScaleSetsClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v := c.vmss[sub]; v != nil {
		return v, nil
	}
	v, err := armcompute.NewVirtualMachineScaleSetsClient(sub, c.cred, c.aopt)
	if err == nil {
		c.vmss[sub] = v
	}
	return v, err
}

// Get reads the identity block of a VM or VMSS (one ARM GET).
func (c *Client) Get(ctx context.Context, r cloud.Resource) (ids cloud.Identities, err error) {
	op := cloud.OperationName(r, false)
	start := time.Now()
	defer func() { c.observe(op, start, err) }()
	var typ *armcompute.ResourceIdentityType
	var uai map[string]*armcompute.UserAssignedIdentitiesValue
	var state, etag *string
	if r.Kind == cloud.KindVMSS {
		cl, cerr := c.vmssClient(r.SubscriptionID)
		if cerr != nil {
			return ids, cerr
		}
		resp, gerr := cl.Get(ctx, r.ResourceGroup, r.Name, nil)
		if gerr != nil {
			return ids, wrap(op, r, gerr)
		}
		if resp.Identity != nil {
			typ, uai = resp.Identity.Type, resp.Identity.UserAssignedIdentities
		}
		if resp.Properties != nil {
			state = resp.Properties.ProvisioningState
		}
		etag = resp.Etag
	} else {
		cl, cerr := c.vmClient(r.SubscriptionID)
		if cerr != nil {
			return ids, cerr
		}
		resp, gerr := cl.Get(ctx, r.ResourceGroup, r.Name, nil)
		if gerr != nil {
			return ids, wrap(op, r, gerr)
		}
		if resp.Identity != nil {
			typ, uai = resp.Identity.Type, resp.Identity.UserAssignedIdentities
		}
		if resp.Properties != nil {
			state = resp.Properties.ProvisioningState
		}
		etag = resp.Etag
	}
	if state != nil && strings.EqualFold(*state, "Deleting") {
		return ids, &cloud.Error{Operation: op, Resource: r, StatusCode: http.StatusConflict, Code: "Deleting",
			Message: "the resource is being deleted; identities are not changed on it"}
	}
	ids = identities(typ, uai)
	if etag != nil {
		ids.ETag = *etag
	}
	return ids, nil
}

// identities converts an identity block as ARM sent it; a missing client ID stays "".
func identities(typ *armcompute.ResourceIdentityType, uai map[string]*armcompute.UserAssignedIdentitiesValue) cloud.Identities {
	ids := cloud.Identities{UserAssigned: make(map[string]string, len(uai))}
	for id, v := range uai {
		client := ""
		if v != nil && v.ClientID != nil {
			client = *v.ClientID
		}
		ids.UserAssigned[strings.ToLower(id)] = client
	}
	ids.SystemAssigned = typ != nil && strings.Contains(string(*typ), string(armcompute.ResourceIdentityTypeSystemAssigned))
	return ids
}

// identityBlock builds the PATCH body: {} adds, null removes, kept identities are omitted, and
// the type keeps a system-assigned identity and becomes None/SystemAssigned only when no
// user-assigned identity remains. ifMatch is set for that last case (see cloud.Identities.ETag).
func identityBlock(u cloud.Update) (typ *armcompute.ResourceIdentityType, ids map[string]*armcompute.UserAssignedIdentitiesValue, ifMatch *string) {
	m := make(map[string]*armcompute.UserAssignedIdentitiesValue, len(u.Add)+len(u.Remove))
	remaining := len(u.Current.UserAssigned)
	for _, id := range u.Remove {
		if u.Current.Has(id) {
			m[id] = nil
			remaining--
		}
	}
	for _, id := range u.Add {
		if !u.Current.Has(id) {
			m[id] = &armcompute.UserAssignedIdentitiesValue{}
			remaining++
		}
	}
	var t armcompute.ResourceIdentityType
	switch {
	case remaining > 0 && u.Current.SystemAssigned:
		t = armcompute.ResourceIdentityTypeSystemAssignedUserAssigned
	case remaining > 0:
		t = armcompute.ResourceIdentityTypeUserAssigned
	case u.Current.SystemAssigned:
		t, m = armcompute.ResourceIdentityTypeSystemAssigned, nil
	default:
		t, m = armcompute.ResourceIdentityTypeNone, nil
	}
	if remaining == 0 && u.Current.ETag != "" {
		ifMatch = &u.Current.ETag
	}
	return &t, m, ifMatch
}

// Update sends one PATCH with the identity changes, waits for its operation to end and returns
// the identity block of the operation's final response (which the SDK's poller fetches anyway),
// so that MIC learns the client IDs of the identities it added without another call.
func (c *Client) Update(ctx context.Context, r cloud.Resource, u cloud.Update) (ids cloud.Identities, err error) {
	if len(u.Add)+len(u.Remove) > cloud.MaxIdentitiesPerRequest {
		return ids, fmt.Errorf("update of %s with %d identities exceeds ARM's limit of %d per request; split it", r, len(u.Add)+len(u.Remove), cloud.MaxIdentitiesPerRequest)
	}
	op := cloud.OperationName(r, true)
	start := time.Now()
	defer func() { c.observe(op, start, err) }()
	typ, m, ifMatch := identityBlock(u)
	if r.Kind == cloud.KindVMSS {
		cl, cerr := c.vmssClient(r.SubscriptionID)
		if cerr != nil {
			return ids, cerr
		}
		p, berr := cl.BeginUpdate(ctx, r.ResourceGroup, r.Name, armcompute.VirtualMachineScaleSetUpdate{
			Identity: &armcompute.VirtualMachineScaleSetIdentity{Type: typ, UserAssignedIdentities: m}},
			&armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions{IfMatch: ifMatch})
		if berr != nil {
			return ids, wrap(op, r, berr)
		}
		resp, werr := wait(ctx, p, c.opts.PollInterval)
		if err = werr; err == nil && resp.Identity != nil {
			ids = identities(resp.Identity.Type, resp.Identity.UserAssignedIdentities)
		}
	} else {
		cl, cerr := c.vmClient(r.SubscriptionID)
		if cerr != nil {
			return ids, cerr
		}
		p, berr := cl.BeginUpdate(ctx, r.ResourceGroup, r.Name, armcompute.VirtualMachineUpdate{
			Identity: &armcompute.VirtualMachineIdentity{Type: typ, UserAssignedIdentities: m}},
			&armcompute.VirtualMachinesClientBeginUpdateOptions{IfMatch: ifMatch})
		if berr != nil {
			return ids, wrap(op, r, berr)
		}
		resp, werr := wait(ctx, p, c.opts.PollInterval)
		if err = werr; err == nil && resp.Identity != nil {
			ids = identities(resp.Identity.Type, resp.Identity.UserAssignedIdentities)
		}
	}
	if err != nil {
		return cloud.Identities{}, wrap(op, r, err)
	}
	return ids, nil
}

// wait polls until the operation ends, honouring Retry-After on polls, with our own interval
// instead of the SDK's 30 s default.
func wait[T any](ctx context.Context, p *runtime.Poller[T], interval time.Duration) (T, error) {
	for !p.Done() {
		d := interval
		resp, err := p.Poll(ctx)
		if err != nil {
			var zero T
			return zero, err
		}
		if p.Done() {
			break
		}
		if ra := retryAfter(resp); ra > 0 && ra < time.Minute {
			d = ra
		}
		select {
		case <-ctx.Done():
			var zero T
			return zero, ctx.Err()
		case <-time.After(d):
		}
	}
	return p.Result(ctx)
}

func retryAfter(resp *http.Response) time.Duration {
	if resp == nil {
		return 0
	}
	v := resp.Header.Get("Retry-After")
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return time.Until(t)
	}
	return 0
}

func wrap(op string, r cloud.Resource, err error) error {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		// Failed long-running operations surface as plain errors carrying the ARM code.
		msg := err.Error()
		e := &cloud.Error{Operation: op, Resource: r, Message: msg, Identities: cloud.IdentitiesInMessage(msg)}
		for _, code := range []string{"LinkedAuthorizationFailed", "FailedIdentityOperation"} {
			if strings.Contains(msg, code) {
				e.Code = code
			}
		}
		return e
	}
	msg := re.Error()
	e := &cloud.Error{Operation: op, Resource: r, StatusCode: re.StatusCode, Code: re.ErrorCode, Message: armMessage(msg),
		RetryAfter: retryAfter(re.RawResponse), Identities: cloud.IdentitiesInMessage(msg)}
	return e
}

// armMessage returns what ARM said (error.message of the JSON body the SDK quotes), which is what
// a person needs in an event; the SDK's whole multi-line dump (URL, status, body) otherwise.
func armMessage(sdk string) string {
	if i, j := strings.Index(sdk, "{"), strings.LastIndex(sdk, "}"); i >= 0 && j > i {
		var body struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal([]byte(sdk[i:j+1]), &body) == nil && body.Error.Message != "" {
			return oneLine(body.Error.Message)
		}
	}
	return oneLine(sdk)
}

// oneLine keeps the part of the SDK's multi-line error that says what ARM answered.
func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 600 {
		s = s[:600] + "…"
	}
	return s
}

func (c *Client) observe(op string, start time.Time, err error) {
	if c.opts.Observe != nil {
		c.opts.Observe(op, time.Since(start), err)
	}
}

// Reloading is a cloud.Compute whose underlying client can be replaced (after azure.json
// changed) while calls are in flight.
type Reloading struct {
	mu  sync.RWMutex
	cur cloud.Compute
}

// NewReloading starts with c.
func NewReloading(c cloud.Compute) *Reloading { return &Reloading{cur: c} }

// Swap replaces the client; calls already running finish on the old one.
func (r *Reloading) Swap(c cloud.Compute) {
	r.mu.Lock()
	r.cur = c
	r.mu.Unlock()
}

func (r *Reloading) get() cloud.Compute {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.cur
}

// Get implements cloud.Compute.
func (r *Reloading) Get(ctx context.Context, res cloud.Resource) (cloud.Identities, error) {
	return r.get().Get(ctx, res)
}

// Update implements cloud.Compute.
func (r *Reloading) Update(ctx context.Context, res cloud.Resource, u cloud.Update) (cloud.Identities, error) {
	return r.get().Update(ctx, res, u)
}
