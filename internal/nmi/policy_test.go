package nmi

import "testing"

// Which adEndpoints NMI sends a service principal's secret to: the configured cloud's authority
// (here China, as CLOUD=AzureChinaCloud sets it) and the operator's extra hosts, compared by
// https origin; nothing else.
func TestAuthoritiesAllowOnlyTheCloudAndListedHosts(t *testing.T) {
	c := Config{}
	if err := c.LoadCloud(func(k string) string {
		if k == "CLOUD" {
			return "AzureChinaCloud"
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	a, err := newAuthorities(c.authorityHost(), []string{"login.contoso.example", "https://adfs.contoso.example:8443/"})
	if err != nil {
		t.Fatal(err)
	}
	for ep, want := range map[string]bool{
		"https://login.chinacloudapi.cn/":          true,
		"https://LOGIN.chinacloudapi.cn":           true,
		"login.chinacloudapi.cn":                   true,
		"https://login.contoso.example/":           true,
		"https://adfs.contoso.example:8443/":       true,
		"https://login.microsoftonline.com/":       false, // another cloud
		"http://login.chinacloudapi.cn/":           false,
		"https://login.chinacloudapi.cn/tenant/":   false,
		"https://login.chinacloudapi.cn.evil.com/": false,
		"https://user@login.chinacloudapi.cn/":     false,
		"https://adfs.contoso.example/":            false, // other port
		"https://login.chinacloudapi.cn/?x=1":      false,
		"":                                         false,
		"://":                                      false,
	} {
		if got := a.allows(ep); got != want {
			t.Errorf("allows(%q) = %v, want %v", ep, got, want)
		}
	}
	for _, bad := range []string{"http://login.contoso.example", "https://login.contoso.example/path", "https://"} {
		if _, err := newAuthorities(c.authorityHost(), []string{bad}); err == nil {
			t.Errorf("--allowed-ad-endpoints=%s accepted", bad)
		}
	}
	if err := (&Config{NodeName: "n", MetadataIP: "127.0.0.1", MetadataPort: 80, OperationMode: ModeStandard, AllowedADEndpoints: []string{"http://x"}}).Validate(); err == nil {
		t.Error("Validate accepted an http entry in AllowedADEndpoints")
	}
}
