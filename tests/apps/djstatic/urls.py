from django.http import JsonResponse
from django.templatetags.static import static
from django.urls import path


def page(request):
    # What a template's {% static %} would put in the page: the hashed name.
    return JsonResponse({"css": static("site.css"), "logo": static("img/logo.svg")})


urlpatterns = [path("", page)]
