"""Billing destinations: the billing sink (``switchboard sink billing``) carries the
processors' CREATE_INVOICE commands (topic ``billing-commands``) to the billing system
chosen by ``billing_backend`` (``stripe``)."""
