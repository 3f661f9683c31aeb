"""Outbound: scheduling, routing, MX resolution, the SMTP client, bounces, local delivery."""
