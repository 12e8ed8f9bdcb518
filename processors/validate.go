package processors

import (
	"fmt"
	"net/mail"
	"strings"

	"github.com/nyaruka/phonenumbers"
)

// ValidateEmail accepts a bare address (no display name), as a mail server would.
func ValidateEmail(addr string) error {
	a, err := mail.ParseAddress(addr)
	if err != nil || a.Address != addr || a.Name != "" {
		return fmt.Errorf("invalid email address %q", addr)
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 1 || !strings.Contains(addr[at+1:], ".") {
		return fmt.Errorf("invalid email address %q: domain must be fully qualified", addr)
	}
	return nil
}

// ValidatePhone accepts a valid number in E.164 form (+ and country code).
func ValidatePhone(phone string) error {
	if !strings.HasPrefix(phone, "+") {
		return fmt.Errorf("invalid phone number %q: must be E.164, starting with + and the country code", phone)
	}
	num, err := phonenumbers.Parse(phone, "")
	if err != nil {
		return fmt.Errorf("invalid phone number %q: %v", phone, err)
	}
	if !phonenumbers.IsValidNumber(num) {
		return fmt.Errorf("invalid phone number %q: not a valid number", phone)
	}
	if e164 := phonenumbers.Format(num, phonenumbers.E164); e164 != phone {
		return fmt.Errorf("invalid phone number %q: E.164 form is %s", phone, e164)
	}
	return nil
}

// ValidateAddress checks an address for the channel it is used on.
func ValidateAddress(channel, addr string) error {
	switch channel {
	case "email":
		return ValidateEmail(addr)
	case "sms", "whatsapp":
		return ValidatePhone(addr)
	}
	return nil
}
