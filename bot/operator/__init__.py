"""The operator's side: settings, allowed servers and shares, image safety, joining and leaving servers, command sync."""
